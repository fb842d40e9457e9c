//! Real TCP and UDP from an outside client through NodePorts, in network namespaces, with the
//! north-south program attached by XDP in native mode (one test) and generic mode (the other),
//! maps programmed through the dataplane library.
//!
//! ```text
//!  client 198.51.100.2 ── router ──┐ 192.0.2.1        (lan: one bridge)
//!                                  ├── node1 eth0 192.0.2.10  XDP lb_xdp_ext; pods a, b (TC lb_tc_pod)
//!                                  └── node2 eth0 192.0.2.20  pod c (no lb: a plain remote node)
//! ```
//! Pods sit behind host-side veths with routed /32s (10.244.1.0/24 on node1, 10.244.2.0/24 on
//! node2); the nodes route each other's pod CIDRs. The client only has a route to node1's
//! address, and node2 has none back to the client, so pod c is only reachable through node1's
//! SNAT. Every backend runs lb-echo, which answers with its name and the peer it saw.
use lb::dataplane::ServiceMaps;
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use lb::dataplane::{maps::Maps, Dataplane, Options, PinLayout, XdpModeUsed, XdpRequest};
use lb_common::{
    map_names, Backend4, Frontend4, Frontend4Key, Service, BE_F_LOCAL, KIND_NODE_PORT, PROTO_TCP,
    PROTO_UDP, SCOPE_EXTERNAL, SVC_F_EXT_LOCAL, VERDICT_DROP, VERDICT_REJECT,
};
use lb_tests::lab::{require_privileged, ChildGuard, Lab, Netns, Reply, RequestError};

const CLIENT: &str = "198.51.100.2";
const NODE1: &str = "192.0.2.10";
const POD_A: &str = "10.244.1.5";
const POD_B: &str = "10.244.1.6";
const POD_C: &str = "10.244.2.7";
const TARGET_PORT: u16 = 8080;

/// eTP=Cluster: pods a, b (local) and c (on node2).
const NP_ALL: u16 = 30080;
/// eTP=Cluster with the remote pod as the only endpoint.
const NP_REMOTE: u16 = 30081;
/// eTP=Local: the local pods a and b (pod c exists but is not usable from outside here).
const NP_LOCAL: u16 = 30082;
/// eTP=Local, the only endpoint is on node2: dropped.
const NP_LOCAL_NONE_HERE: u16 = 30083;
/// No endpoints at all: rejected.
const NP_EMPTY: u16 = 30084;

/// Backend ids.
const BE_A: u32 = 1;
const BE_B: u32 = 2;
const BE_C: u32 = 3;

/// How long one request may take when it is expected to succeed.
const T: Duration = Duration::from_secs(2);
/// How long to send requests while waiting to see every backend.
const SPREAD_DEADLINE: Duration = Duration::from_secs(20);
/// At least this many requests (new flows) per spread, so an endpoint that must never answer
/// (pod c under eTP=Local) has had its chances.
const SPREAD_MIN: usize = 12;

fn addr(s: &str) -> u32 {
    u32::from_ne_bytes(s.parse::<Ipv4Addr>().expect("ip").octets())
}

fn nodeport(port: u16) -> SocketAddr {
    SocketAddr::from((NODE1.parse::<Ipv4Addr>().unwrap(), port))
}

fn proto_name(udp: bool) -> &'static str {
    if udp {
        "UDP"
    } else {
        "TCP"
    }
}

/// A pod behind a host-side veth on `node` with a /32 route (as Calico does); `gw` is the
/// node's address on the host side.
fn pod(lab: &Lab, node: &Netns, name: &str, ip: &str, gw: &str, host_if: &str) -> Netns {
    lb_tests::topology::pod_via(lab, node, name, ip, gw, host_if).expect("pod")
}

/// The lab of one test: the topology of the module documentation, with node1 programmed.
struct Topology {
    // Field order is drop order: servers before the lab that owns their namespaces.
    _servers: Vec<ChildGuard>,
    _switch_port_xdp: Option<OwnedFd>,
    client: Netns,
    node1: Netns,
    pin: PathBuf,
    mode_used: XdpModeUsed,
    lab: Lab,
}

impl Topology {
    /// `peer_xdp`: the switch port facing node1 runs an XDP program (what native XDP on a veth
    /// needs to deliver what it transmits).
    fn build(test: &str, mode: XdpRequest, peer_xdp: bool) -> Topology {
        let lab = Lab::new(test).expect("lab");
        lab.set_echo_bin(env!("CARGO_BIN_EXE_lb-echo"));
        let client = lab.netns("client").expect("client");
        let router = lab.netns("router").expect("router");
        let lan = lab.netns("lan").expect("lan");
        let node1 = lab.netns("node1").expect("node1");
        let node2 = lab.netns("node2").expect("node2");

        lab.veth(&client, "eth0", &router, "eth0").expect("veth");
        lab.veth(&router, "eth1", &lan, "r").expect("veth");
        lab.veth(&node1, "eth0", &lan, "n1").expect("veth");
        lab.veth(&node2, "eth0", &lan, "n2").expect("veth");
        lab.bridge(&lan, "br0", &["r", "n1", "n2"]).expect("bridge");

        client.add_addr("eth0", "198.51.100.2/24").expect("addr");
        // The client knows the way to node1's address, nothing else (no pod routes).
        client
            .add_route(&format!("{NODE1}/32"), "198.51.100.1")
            .expect("route");
        router.add_addr("eth0", "198.51.100.1/24").expect("addr");
        router.add_addr("eth1", "192.0.2.1/24").expect("addr");
        router.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");

        node1.add_addr("eth0", "192.0.2.10/24").expect("addr");
        node1.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
        node1
            .add_route("198.51.100.0/24", "192.0.2.1")
            .expect("route");
        node1
            .add_route("10.244.2.0/24", "192.0.2.20")
            .expect("route");
        node2.add_addr("eth0", "192.0.2.20/24").expect("addr");
        node2.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
        node2
            .add_route("10.244.1.0/24", "192.0.2.10")
            .expect("route");
        // node2 has no route to the client network: pod c's answers reach the client only
        // because node1 SNATs what it sends there.

        // The nodes of a cluster talk to each other (and to their gateway) all the time, so their
        // neighbour entries are resolved; here they have just booted. XDP cannot resolve a next
        // hop itself: it transmits only when bpf_fib_lookup finds the neighbour, and otherwise
        // hands the packet to the stack, which drops it as a martian (its source is node1's
        // address). So resolve them the way cluster traffic would.
        for next_hop in ["192.0.2.20", "192.0.2.1"] {
            node1
                .exec("ping", ["-c1", "-W2", next_hop])
                .expect("node1 reaches its neighbours");
        }

        let pod_a = pod(&lab, &node1, "pod-a", POD_A, "10.244.1.1", "h1");
        let pod_b = pod(&lab, &node1, "pod-b", POD_B, "10.244.1.1", "h2");
        let pod_c = pod(&lab, &node2, "pod-c", POD_C, "10.244.2.1", "h1");

        // XDP on a veth sees CHECKSUM_PARTIAL packets from senders with TX checksum offload on:
        // turn it off on everything that transmits towards node1's eth0 (README, "The datapath").
        for (ns, iface) in [
            (&client, "eth0"),
            (&router, "eth1"),
            (&lan, "n1"),
            (&node2, "eth0"),
            (&pod_c, "eth0"),
        ] {
            ns.tx_offload_off(iface).expect("tx offload off");
        }
        // What native XDP on node1's eth0 sends back out (XDP_TX: rejects, SNAT towards node2,
        // replies to the client) is delivered by the switch port only if that port runs an XDP
        // program too (see Netns::xdp_pass). A physical NIC needs nothing of the sort.
        let switch_port_xdp = peer_xdp.then(|| lan.xdp_pass("n1").expect("XDP pass program on n1"));

        let mut servers = Vec::new();
        for (ns, name) in [(&pod_a, "pod-a"), (&pod_b, "pod-b"), (&pod_c, "pod-c")] {
            for udp in [false, true] {
                servers.push(ns.serve_echo(name, TARGET_PORT, udp).expect("echo server"));
            }
        }

        let pin = lab.pin_path("node1");
        let pin2 = pin.clone();
        let mode_used = node1
            .in_netns(move || program_node1(pin2, mode))
            .expect("enter node1")
            .expect("program node1");
        Topology {
            _servers: servers,
            _switch_port_xdp: switch_port_xdp,
            client,
            node1,
            pin,
            mode_used,
            lab,
        }
    }

    /// lb's global counters on node1 (read from the pinned maps).
    fn counters(&self) -> BTreeMap<&'static str, u64> {
        Maps::open_pinned(&PinLayout::new(&self.pin))
            .and_then(|m| m.global_counters())
            .expect("global counters")
    }

    /// What to print when something fails: lb's counters, node1's neighbours and what its
    /// eth0 did with the frames XDP saw.
    fn diag(&self) -> String {
        let counters = Maps::open_pinned(&PinLayout::new(&self.pin))
            .and_then(|m| m.global_counters())
            .map(|c| format!("{c:?}"))
            .unwrap_or_else(|e| format!("(counters: {e:#})"));
        let neigh = self.node1.ip("neigh show").unwrap_or_default();
        let xdp = self
            .node1
            .sh("ethtool -S eth0 | grep xdp || true")
            .unwrap_or_default();
        format!(
            "lab {}; lb counters: {counters}\nnode1 neighbours:\n{neigh}node1 eth0:\n{xdp}",
            self.lab.prefix()
        )
    }

    /// One request from the client that must succeed.
    fn ask(&self, to: SocketAddr, udp: bool) -> Reply {
        match self.client.request(to, udp, T) {
            Ok(r) => r,
            Err(e) => panic!(
                "{} request to {to} failed: {e}\n{}",
                proto_name(udp),
                self.diag()
            ),
        }
    }

    /// Sends requests to `to`, each on a new connection or socket (a new flow, so a new backend
    /// choice), until every backend in `want` has answered (and at least [`SPREAD_MIN`] times);
    /// checks every reply with `check`. Returns how many answers each backend gave.
    fn spread(
        &self,
        to: SocketAddr,
        udp: bool,
        want: &[&str],
        check: impl Fn(&Reply),
    ) -> BTreeMap<String, usize> {
        let start = Instant::now();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        loop {
            let reply = self.ask(to, udp);
            check(&reply);
            assert!(
                want.contains(&reply.name.as_str()),
                "{} {to}: answered by {reply}, expected one of {want:?}",
                proto_name(udp)
            );
            *seen.entry(reply.name).or_default() += 1;
            let asked: usize = seen.values().sum();
            if asked >= SPREAD_MIN && want.iter().all(|w| seen.contains_key(*w)) {
                return seen;
            }
            assert!(
                start.elapsed() < SPREAD_DEADLINE,
                "{} {to}: after {:?} only {seen:?} answered, expected all of {want:?}",
                proto_name(udp),
                start.elapsed()
            );
        }
    }
}

/// Runs in node1's namespace: load, attach and program the dataplane. Returns the XDP mode the
/// kernel gave. Dropping the dataplane leaves programs and maps pinned: traffic keeps flowing.
fn program_node1(pin: PathBuf, mode: XdpRequest) -> anyhow::Result<XdpModeUsed> {
    let opts = Options {
        pin_path: pin,
        capacities: vec![
            (map_names::CT4, 4096),
            (map_names::RNAT4, 4096),
            (map_names::CT_ANY4, 4096),
            (map_names::RNAT_ANY4, 4096),
            (map_names::SLOTS, 1024),
        ],
    };
    let mut dp = Dataplane::open(&opts)?;
    let used = dp.attach_ext("eth0", mode)?.mode;
    dp.attach_pod("h1")?;
    dp.attach_pod("h2")?;
    let eth0 = lb::dataplane::ifindex("eth0")?;
    dp.maps.set_node_addr(eth0, NODE1.parse()?)?;

    for (id, ip, flags) in [
        (BE_A, POD_A, BE_F_LOCAL),
        (BE_B, POD_B, BE_F_LOCAL),
        (BE_C, POD_C, 0),
    ] {
        let be = Backend4 {
            addr: addr(ip),
            port: TARGET_PORT.to_be(),
            flags,
            _pad: 0,
        };
        ServiceMaps::<Ipv4Addr>::set_backend(&mut dp.maps, id, &be)?;
    }
    // (NodePort, backends for traffic from outside, service flags, verdict when empty), as the
    // model computes them: eTP=Local keeps only local endpoints and drops when endpoints exist
    // elsewhere only; no endpoints at all is a reject.
    let services: [(u16, &[u32], u8, u8); 5] = [
        (NP_ALL, &[BE_A, BE_B, BE_C], 0, VERDICT_REJECT),
        (NP_REMOTE, &[BE_C], 0, VERDICT_REJECT),
        (NP_LOCAL, &[BE_A, BE_B], SVC_F_EXT_LOCAL, VERDICT_DROP),
        (NP_LOCAL_NONE_HERE, &[], SVC_F_EXT_LOCAL, VERDICT_DROP),
        (NP_EMPTY, &[], 0, VERDICT_REJECT),
    ];
    let mut id = 0;
    for (port, backends, flags, verdict) in services {
        for proto in [PROTO_TCP, PROTO_UDP] {
            id += 1;
            let svc = Service {
                flags,
                verdict,
                ..Default::default()
            };
            ServiceMaps::<Ipv4Addr>::set_service(&mut dp.maps, id, &svc, backends, 0)?;
            let key = Frontend4Key {
                addr: addr(NODE1),
                port: port.to_be(),
                proto,
                scope: SCOPE_EXTERNAL,
            };
            let fe = Frontend4 {
                service_id: id,
                stats_id: id,
                kind: KIND_NODE_PORT,
                flags: 0,
                _pad: [0; 2],
            };
            ServiceMaps::<Ipv4Addr>::set_frontend(&mut dp.maps, &key, &fe)?;
        }
    }
    Ok(used)
}

fn is_client(peer: &SocketAddr) -> bool {
    peer.ip().to_string() == CLIENT
}

/// The scenarios a user of NodePorts would notice, for one XDP mode.
fn nodeport_scenarios(test: &str, mode: XdpRequest, want_mode: XdpModeUsed) {
    if !require_privileged(test) {
        return;
    }
    let started = Instant::now();
    let t = Topology::build(test, mode, true);
    assert_eq!(
        t.mode_used, want_mode,
        "{mode:?} XDP on a veth attaches in the mode asked for"
    );
    println!("{test}: lab up in {:?}", started.elapsed());

    for udp in [false, true] {
        let proto = proto_name(udp);

        // (1) eTP=Cluster: every backend answers, local ones see the client, the remote one
        // sees node1 (SNAT).
        let seen = t.spread(nodeport(NP_ALL), udp, &["pod-a", "pod-b", "pod-c"], |r| {
            if r.name == "pod-c" {
                assert_eq!(
                    r.peer.ip().to_string(),
                    NODE1,
                    "{proto}: the remote pod sees node1's address (SNAT): {r}"
                );
            } else {
                assert!(
                    is_client(&r.peer),
                    "{proto}: a local pod sees the client's address: {r}"
                );
            }
        });
        println!("{test}: {proto} NodePort {NP_ALL} (eTP=Cluster) answered by {seen:?}");

        // (2) eTP=Cluster to the remote backend only: end to end through SNAT, several requests
        // over one connection (established flow, both directions).
        let mut conn = t
            .client
            .echo_conn(nodeport(NP_REMOTE), udp, T)
            .unwrap_or_else(|e| panic!("{proto} connect to {NP_REMOTE}: {e}\n{}", t.diag()));
        assert_eq!(conn.remote_addr(), nodeport(NP_REMOTE));
        let mut snat_peer = None;
        for i in 0..3 {
            let r = conn.ask(T).unwrap_or_else(|e| {
                panic!("{proto} request {i} to {NP_REMOTE}: {e}\n{}", t.diag())
            });
            assert_eq!(r.name, "pod-c", "{proto}: the only endpoint answers");
            assert_eq!(
                r.peer.ip().to_string(),
                NODE1,
                "{proto}: the remote pod sees node1's address: {r}"
            );
            assert!(
                (61000..=65535).contains(&r.peer.port()),
                "{proto}: SNAT source port from 61000-65535: {r}"
            );
            // The same flow keeps its SNAT port.
            assert_eq!(
                *snat_peer.get_or_insert(r.peer),
                r.peer,
                "{proto}: one flow, one port"
            );
        }
        drop(conn);
        println!("{test}: {proto} NodePort {NP_REMOTE} (remote only) via SNAT {snat_peer:?}");

        // (3) eTP=Local: only the local pods, and they see the client's own address and port.
        let seen = t.spread(nodeport(NP_LOCAL), udp, &["pod-a", "pod-b"], |r| {
            assert!(
                is_client(&r.peer),
                "{proto}: eTP=Local keeps the client's source address: {r}"
            );
        });
        let mut conn = t
            .client
            .echo_conn(nodeport(NP_LOCAL), udp, T)
            .unwrap_or_else(|e| panic!("{proto} connect to {NP_LOCAL}: {e}\n{}", t.diag()));
        let r = conn
            .ask(T)
            .unwrap_or_else(|e| panic!("{proto} request to {NP_LOCAL}: {e}\n{}", t.diag()));
        assert_eq!(
            r.peer,
            conn.local_addr(),
            "{proto}: eTP=Local: the backend sees exactly the client's address and port"
        );
        drop(conn);
        println!("{test}: {proto} NodePort {NP_LOCAL} (eTP=Local) answered by {seen:?}");

        // (4a) eTP=Local with endpoints on node2 only: dropped, the client hears nothing.
        let drops_before = t.counters()["drop_no_local_backend"];
        let wait = Duration::from_millis(700);
        let asked = Instant::now();
        let r = t.client.request(nodeport(NP_LOCAL_NONE_HERE), udp, wait);
        assert_eq!(
            r,
            Err(RequestError::Timeout),
            "{proto}: eTP=Local without local endpoints: dropped (a timeout, not refused)\n{}",
            t.diag()
        );
        assert!(asked.elapsed() >= wait, "{proto}: {:?}", asked.elapsed());
        let drops = t.counters()["drop_no_local_backend"];
        assert!(
            drops > drops_before,
            "{proto}: the drop is counted ({drops_before} -> {drops})"
        );

        // (4b) No endpoints at all: refused at once.
        let rejects_before = t.counters()["reject_no_backend"];
        let asked = Instant::now();
        let r = t.client.request(nodeport(NP_EMPTY), udp, T);
        let took = asked.elapsed();
        assert_eq!(
            r,
            Err(RequestError::Refused),
            "{proto}: no endpoints: refused\n{}",
            t.diag()
        );
        // At once: a drop would take the whole request timeout (2 s). 500 ms leaves room for a
        // loaded machine (141 ms seen with two other builds running).
        assert!(
            took < Duration::from_millis(500),
            "{proto}: refused within 500 ms, took {took:?}"
        );
        let rejects = t.counters()["reject_no_backend"];
        assert!(
            rejects > rejects_before,
            "{proto}: the reject is counted ({rejects_before} -> {rejects})"
        );
        println!(
            "{test}: {proto} eTP=Local elsewhere-only dropped, no endpoints refused in {took:?}"
        );
    }

    let counters = t.counters();
    println!("{test}: lb counters {counters:?}");
    assert_eq!(counters["drop_no_snat_addr"], 0, "{}", t.diag());
    assert_eq!(counters["drop_rewrite"], 0, "{}", t.diag());
    println!("{test}: done in {:?}", started.elapsed());
}

#[test]
fn nodeport_through_native_xdp() {
    nodeport_scenarios(
        "lab_nodeport::native",
        XdpRequest::Native,
        XdpModeUsed::Native,
    );
}

#[test]
fn nodeport_through_generic_xdp() {
    nodeport_scenarios(
        "lab_nodeport::generic",
        XdpRequest::Generic,
        XdpModeUsed::Generic,
    );
}

/// Native XDP on a veth whose peer runs no XDP program (a router, the host side of a kind node):
/// what lb transmits towards the remote backend is dropped by the kernel. `--xdp-mode native`
/// still allows it; this is what `auto` avoids. The drops are no longer silent: they are
/// counted per interface, as `lbctl interfaces` and the metrics show.
#[test]
fn native_xdp_without_peer_xdp_counts_what_the_kernel_drops() {
    let test = "lab_nodeport::native_no_peer_xdp";
    if !require_privileged(test) {
        return;
    }
    let t = Topology::build(test, XdpRequest::Native, false);
    assert_eq!(t.mode_used, XdpModeUsed::Native);
    let eth0 = t.node1.ifindex("eth0").expect("ifindex");
    let drops = || {
        Maps::open_pinned(&PinLayout::new(&t.pin))
            .expect("maps")
            .xmit_drops(eth0)
            .expect("eth0's transmit drops are counted")
    };
    assert_eq!(drops(), 0, "nothing transmitted yet");
    // The local pods answer (delivered by the stack), the remote one never does: its SYNs
    // are SNATed and XDP_TXed back out of eth0, and the veth drops them.
    let remote = t
        .client
        .request(nodeport(NP_REMOTE), false, Duration::from_millis(500));
    assert!(remote.is_err(), "the remote backend answered: {remote:?}");
    let counted = lb_tests::lab::poll_until(Duration::from_secs(5), || {
        let n = drops();
        (n > 0).then_some(n)
    });
    assert!(counted.is_some(), "no transmit drop counted\n{}", t.diag());
    let local = t.client.request(nodeport(NP_LOCAL), false, T);
    assert!(
        local.is_ok(),
        "a local pod answers: {local:?}\n{}",
        t.diag()
    );
}
