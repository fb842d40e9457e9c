//! Socket-level load balancing on the two-node lab cluster ([`lb_tests::cluster_lab`]), with
//! the real agents at their defaults (`--socket-lb host`) attaching their hooks to the lab's
//! cgroup: processes in a node's own network namespace, moved into that cgroup, reach Services
//! as kube-proxy's OUTPUT rules give them to a node (hostNetwork pods, node daemons, the API
//! server), and pods do with `--socket-lb all`. A process outside the cgroup is the control: the
//! hooks, and nothing else, serve it.
use std::time::{Duration, Instant};

use lb_tests::{
    cluster_lab::{
        ready, service, slice, slice6, terminating, until_frontend, web_service, Cluster, APPLY,
    },
    lab::{poll_until, require_privileged, scaled, Netns},
};

const A: &str = "node-a";
const B: &str = "node-b";
const A_IP: &str = "192.0.2.10";
const A1: &str = "10.244.1.5";
const A2: &str = "10.244.1.6";
const B1: &str = "10.244.2.5";
const A1_6: &str = "fd00:244:1::5";
const B1_6: &str = "fd00:244:2::5";
const ECHO: &str = env!("CARGO_BIN_EXE_lb-echo");

/// An address node-a holds beside its node address (on lo), for an externalIP it owns.
const HELD_IP: &str = "192.0.2.50";
/// An externalIP nobody in the lab holds.
const FOREIGN_IP: &str = "192.0.2.60";
/// LoadBalancer IPs node-a holds (on lo): one whose source ranges hold node-a's address, one
/// whose ranges do not.
const LB_OPEN_IP: &str = "192.0.2.51";
const LB_CLOSED_IP: &str = "192.0.2.52";
/// The same for IPv6.
const A_IP6: &str = "2001:db8::10";
const HELD_IP6: &str = "2001:db8::50";
const FOREIGN_IP6: &str = "2001:db8::60";
const LB_OPEN_IP6: &str = "2001:db8::51";
const LB_CLOSED_IP6: &str = "2001:db8::52";

fn cluster(test: &str, objects: &[(&str, &str)], flags: &[&str]) -> Option<Cluster> {
    if !require_privileged("lab_socket_lb") {
        return None;
    }
    Some(Cluster::start_with_flags(test, ECHO, objects, flags).expect("cluster lab"))
}

/// What one `lb-echo request --show-peer` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// The answering pod, and the peer the client's socket reported.
    From {
        pod: String,
        peer: String,
    },
    Error(String),
}

/// Runs `lb-echo request --show-peer ARGS` in `ns`, in the lab's cgroup, and parses its lines.
fn ask(ns: &Netns, args: &[&str]) -> Vec<Answer> {
    let args = [&["request", "--show-peer"][..], args].concat();
    let out = ns.exec_in_cgroup(ECHO, &args).expect("lb-echo request");
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// One request to `addr` that gives up after 300 ms: for addresses that must not answer.
fn ask_briefly(ns: &Netns, addr: &str) -> Vec<Answer> {
    ask(ns, &["--addr", addr, "--timeout-ms", "300"])
}

fn parse(stdout: &str) -> Vec<Answer> {
    stdout
        .lines()
        .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["ERROR", kind] => Answer::Error(kind.into()),
            [pod, _client, "from", peer] => Answer::From {
                pod: pod.into(),
                peer: peer.into(),
            },
            _ => panic!("unexpected lb-echo line {l:?}"),
        })
        .collect()
}

/// The pods that answered, sorted and deduplicated; panics on an error or a peer other than
/// `service` (what getpeername()/recvfrom() must report: the Service, not the backend).
fn pods(answers: &[Answer], service: &str) -> Vec<String> {
    let mut pods: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Answer::From { pod, peer } if peer == service => pod.clone(),
            other => panic!("{service}: {other:?} in {answers:?}"),
        })
        .collect();
    pods.sort();
    pods.dedup();
    pods
}

/// Polls `ask` until its pods are `want` (the agent may still be applying an edit).
fn until_pods(ns: &Netns, args: &[&str], service: &str, want: &[&str]) {
    let mut last = Vec::new();
    let ok = poll_until(APPLY, || {
        last = ask(ns, args);
        let clean = last
            .iter()
            .all(|a| matches!(a, Answer::From { peer, .. } if peer == service));
        (clean && pods(&last, service) == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{service} {args:?}: wanted {want:?}, last {last:?}"
    );
}

/// `lbctl stats` of `node`: the socket translations of frontend `ip:port/proto` and the packets
/// the per-packet path counted on it (pod scope).
fn counters(c: &Cluster, node: &str, ip: &str, port: u16, proto: &str) -> (u64, u64) {
    let stats = c.node(node).lbctl_json(&["stats"]).expect("lbctl stats");
    let mut socket = 0;
    let mut packets = 0;
    for f in stats["frontends"].as_array().expect("frontends") {
        let fe = &f["frontend"];
        if fe["ip"] == ip && fe["port"] == port && fe["protocol"] == proto {
            socket += f["socket_translations"]
                .as_u64()
                .expect("socket_translations");
            packets += f["packets"].as_u64().expect("packets");
        }
    }
    (socket, packets)
}

fn web(endpoints: &str) -> String {
    web_service("10.96.0.10", 30080, endpoints)
}

fn objects() -> Vec<(&'static str, String)> {
    let sticky = service(
        "sticky",
        "",
        "  clusterIP: 10.96.0.11\n  sessionAffinity: ClientIP\n  ports:\n  \
         - {port: 80, targetPort: 8080}\n",
    ) + &slice(
        "sticky",
        "sticky-1",
        "[{port: 8080}]",
        &(ready(A1, A) + &ready(A2, A) + &ready(B1, B)),
    );
    let empty = service(
        "empty",
        "",
        "  clusterIP: 10.96.0.12\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    ) + &slice("empty", "empty-1", "[{port: 8080}]", "");
    let external = service(
        "external",
        "",
        &format!(
            "  clusterIP: 10.96.0.13\n  externalIPs: [{HELD_IP}, {FOREIGN_IP}]\n  ports:\n  \
             - {{port: 80, targetPort: 8080}}\n"
        ),
    ) + &slice("external", "external-1", "[{port: 8080}]", &ready(B1, B));
    let ranged = |name: &str, n: u16, ip: &str, range: &str| {
        let spec = format!(
            "  type: LoadBalancer\n  clusterIP: 10.96.0.{n}\n  loadBalancerSourceRanges: \
             [{range}]\n  ports:\n  - {{port: 80, targetPort: 8080, nodePort: {}}}\nstatus:\n  \
             loadBalancer: {{ingress: [{{ip: {ip}}}]}}\n",
            30000 + n,
        );
        service(name, "", &spec)
            + &slice(name, &format!("{name}-1"), "[{port: 8080}]", &ready(B1, B))
    };
    vec![
        ("web.yaml", web(&(ready(A1, A) + &ready(B1, B)))),
        ("sticky.yaml", sticky),
        ("empty.yaml", empty),
        ("external.yaml", external),
        // Source ranges: the node's connections pass only where a range holds its address.
        ("open.yaml", ranged("open", 14, LB_OPEN_IP, "192.0.2.0/24")),
        (
            "closed.yaml",
            ranged("closed", 15, LB_CLOSED_IP, "198.51.100.0/24"),
        ),
    ]
}

fn start(test: &str, flags: &[&str]) -> Option<Cluster> {
    let objects = objects();
    let refs: Vec<(&str, &str)> = objects.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let c = cluster(test, &refs, flags)?;
    let node = c.node(A);
    for ip in [HELD_IP, LB_OPEN_IP, LB_CLOSED_IP] {
        node.ns
            .add_addr("lo", &format!("{ip}/32"))
            .expect("held address");
    }
    until_frontend(node, "10.96.0.10", 80, false, Some(&[A1, B1]));
    Some(c)
}

/// TCP, connected and unconnected UDP, NodePort on the node's own address and on localhost,
/// externalIPs held or not, affinity, no endpoints: from a process in node-a's namespace, as a
/// hostNetwork pod is.
#[test]
fn the_node_reaches_services_at_connect_time() {
    let Some(c) = start("socket-lb-host", &[]) else {
        return;
    };
    let node = &c.node(A).ns;
    let many = ["--count", "40"];

    // ClusterIP over TCP: local and remote backends, and the socket reports the Service.
    let tcp = [&["--addr", "10.96.0.10:80"][..], &many].concat();
    until_pods(node, &tcp, "10.96.0.10:80", &["a1", "b1"]);
    // UDP on a connected socket (recv) and an unconnected one (recvfrom's source is what a DNS
    // stub resolver checks): both see the Service address.
    let udp = [&["--udp", "--addr", "10.96.0.10:53"][..], &many].concat();
    until_pods(node, &udp, "10.96.0.10:53", &["a1", "b1"]);
    let unconnected = [&udp[..], &["--unconnected"]].concat();
    let answers = ask(node, &unconnected);
    assert!(!pods(&answers, "10.96.0.10:53").is_empty(), "{answers:?}");
    // A dual-stack (IPv6) socket reaching the Service by its IPv4-mapped address, as Java does
    // by default: connect6 translates it (the kernel hands such a connect() to IPv4 without
    // connect4), getpeername6 and recvmsg6 report the Service, for TCP and both kinds of UDP.
    let mapped_tcp = "[::ffff:10.96.0.10]:80";
    let tcp6 = [&["--addr", mapped_tcp][..], &many].concat();
    until_pods(node, &tcp6, mapped_tcp, &["a1", "b1"]);
    let mapped_udp = "[::ffff:10.96.0.10]:53";
    let udp6 = [&["--udp", "--addr", mapped_udp][..], &many].concat();
    until_pods(node, &udp6, mapped_udp, &["a1", "b1"]);
    let answers = ask(node, &[&udp6[..], &["--unconnected"]].concat());
    assert!(!pods(&answers, mapped_udp).is_empty(), "{answers:?}");
    // NodePort on the node's own address.
    let nodeport = format!("{A_IP}:30080");
    until_pods(
        node,
        &["--addr", &nodeport, "--count", "40"],
        &nodeport,
        &["a1", "b1"],
    );
    // ... and on localhost, as kube-proxy's iptables mode serves it.
    let localhost = "127.0.0.1:30080";
    until_pods(
        node,
        &["--addr", localhost, "--count", "20"],
        localhost,
        &["a1", "b1"],
    );

    // Outside the cgroup nothing translates: the hooks are what serve the node, and they stay
    // in the cgroup they were given.
    let outside = node.exec_unchecked(
        ECHO,
        ["request", "--addr", "10.96.0.10:80", "--timeout-ms", "300"],
    );
    let outside = outside.expect("lb-echo outside the cgroup");
    assert!(
        !outside.status.success(),
        "answered outside the cgroup: {outside:?}"
    );

    // An externalIP the node holds is the Service's; one it does not hold is someone else's
    // (CVE-2020-8554): not translated, so it goes where the network sends it (nowhere here).
    let held = format!("{HELD_IP}:80");
    until_pods(node, &["--addr", &held], &held, &["b1"]);
    let foreign = ask_briefly(node, &format!("{FOREIGN_IP}:80"));
    assert!(matches!(foreign[..], [Answer::Error(_)]), "{foreign:?}");
    assert_eq!(
        counters(&c, A, FOREIGN_IP, 80, "TCP").0,
        0,
        "foreign externalIP translated"
    );

    // loadBalancerSourceRanges: the node's own connection passes where a range holds the node's
    // address, and times out where none does (kube-proxy drops it there).
    let open = format!("{LB_OPEN_IP}:80");
    until_pods(node, &["--addr", &open], &open, &["b1"]);
    let closed = ask(node, &["--addr", &format!("{LB_CLOSED_IP}:80")]);
    assert_eq!(closed, [Answer::Error("timeout".into())], "{closed:?}");

    // Session affinity: every connection lands on one backend.
    let sticky = ask(node, &["--addr", "10.96.0.11:80", "--count", "30"]);
    assert_eq!(pods(&sticky, "10.96.0.11:80").len(), 1, "{sticky:?}");

    // No endpoints: connect() fails with ECONNREFUSED at once, as a rejecting packet path does.
    let t = Instant::now();
    let refused = ask(node, &["--addr", "10.96.0.12:80"]);
    let took = t.elapsed();
    assert_eq!(refused, [Answer::Error("refused".into())]);
    // The process start is in it too; the refusal itself is immediate.
    assert!(
        took < scaled(Duration::from_millis(500)),
        "refused after {took:?}"
    );

    // lbctl: where and how the hooks run, and what they translated per frontend.
    let stats = c.node(A).lbctl_json(&["stats"]).expect("lbctl stats");
    assert_eq!(stats["socket_lb"]["mode"], "host", "{stats}");
    let cgroup = c
        .lab
        .cgroup_inside()
        .expect("lab cgroup")
        .display()
        .to_string();
    assert_eq!(stats["socket_lb"]["cgroup"], cgroup.as_str(), "{stats}");
    let (socket, packets) = counters(&c, A, "10.96.0.10", 80, "TCP");
    assert!(socket >= 40, "socket translations {socket}");
    assert_eq!(
        packets, 0,
        "the node's connections went through the packet path"
    );
}

/// A held connection to a backend that starts terminating keeps working; new ones go to the
/// ready backend.
#[test]
fn a_terminating_backend_keeps_its_held_connection() {
    let Some(c) = start("socket-lb-term", &[]) else {
        return;
    };
    let node = &c.node(A).ns;
    c.write("web.yaml", &web(&ready(A1, A)));
    until_frontend(c.node(A), "10.96.0.10", 80, false, Some(&[A1]));
    let mut cmd = node.command_in_cgroup(ECHO).expect("cgroup");
    cmd.args([
        "request",
        "--show-peer",
        "--addr",
        "10.96.0.10:80",
        "--hold",
    ]);
    cmd.args(["--count", "40", "--interval-ms", "100"]);
    let mut held = node.spawn_command("held", cmd).expect("held connection");
    // Let it connect, then a1 terminates and b1 is the ready one.
    poll_until(APPLY, || (!held.stdout().is_empty()).then_some(())).expect("first answer");
    c.write("web.yaml", &web(&(terminating(A1, A) + &ready(B1, B))));
    until_frontend(c.node(A), "10.96.0.10", 80, false, Some(&[B1]));
    until_pods(node, &["--addr", "10.96.0.10:80"], "10.96.0.10:80", &["b1"]);
    let status = held
        .wait_timeout(scaled(APPLY))
        .expect("wait")
        .expect("held run ended");
    let answers = parse(&held.stdout());
    assert!(status.success(), "{answers:?}\n{}", held.stderr());
    assert_eq!(answers.len(), 40);
    assert_eq!(pods(&answers, "10.96.0.10:80"), ["a1"]);
}

/// kill -9 of the agent and a restart while the node connects in a loop: no connection fails
/// (the hooks and maps stay; the new agent replaces the hooks without a gap).
#[test]
fn agent_restart_fails_no_connection_from_the_node() {
    let Some(mut c) = start("socket-lb-restart", &[]) else {
        return;
    };
    let node = c.node(A).ns.clone();
    let mut cmd = node.command_in_cgroup(ECHO).expect("cgroup");
    cmd.args(["request", "--show-peer", "--addr", "10.96.0.10:80"]);
    cmd.args(["--count", "300", "--interval-ms", "20"]);
    let mut looping = node.spawn_command("loop", cmd).expect("connection loop");
    poll_until(APPLY, || (!looping.stdout().is_empty()).then_some(())).expect("first answer");
    c.kill_agent(0).expect("kill -9");
    c.restart_agent(0).expect("restart");
    let status = looping
        .wait_timeout(scaled(4 * APPLY))
        .expect("wait")
        .expect("loop ended");
    let answers = parse(&looping.stdout());
    assert!(status.success(), "{answers:?}\n{}", c.agent_logs());
    assert_eq!(answers.len(), 300);
    assert_eq!(pods(&answers, "10.96.0.10:80"), ["a1", "b1"]);
}

/// `--socket-lb all`: a pod's process in the cgroup reaches the Service at connect() time, so the
/// pod-side TC program never sees the ClusterIP; a pod outside the cgroup still gets it per packet.
#[test]
fn socket_lb_all_serves_pods_without_per_packet_nat() {
    let Some(c) = start("socket-lb-all", &["--socket-lb", "all"]) else {
        return;
    };
    let inside = &c.pod("a2").ns;
    until_pods(
        inside,
        &["--addr", "10.96.0.10:80", "--count", "40"],
        "10.96.0.10:80",
        &["a1", "b1"],
    );
    // Both agents' hooks are on the lab's one cgroup and in `all` mode act on every pod socket:
    // the first to run translates, counting in its own node's maps (one agent per machine in a
    // real cluster).
    let (socket_a, packets) = counters(&c, A, "10.96.0.10", 80, "TCP");
    let (socket_b, _) = counters(&c, B, "10.96.0.10", 80, "TCP");
    assert!(
        socket_a + socket_b >= 40,
        "socket translations {socket_a} + {socket_b}"
    );
    assert_eq!(packets, 0, "TC saw packets addressed to the ClusterIP");
    // The same pod outside the cgroup: the per-packet path serves it.
    let outside = c
        .pod("a2")
        .ns
        .exec(ECHO, ["request", "--addr", "10.96.0.10:80"]);
    let line = String::from_utf8(outside.expect("per-packet request").stdout).expect("utf-8");
    assert!(line.starts_with("a1 ") || line.starts_with("b1 "), "{line}");
    let (_, packets) = counters(&c, A, "10.96.0.10", 80, "TCP");
    assert!(
        packets > 0,
        "the per-packet path did not count the pod outside the cgroup"
    );
    // Session affinity stays with the packet path for pods (their address is unknown at connect
    // time): still one backend.
    let sticky = ask(inside, &["--addr", "10.96.0.11:80", "--count", "20"]);
    assert_eq!(pods(&sticky, "10.96.0.11:80").len(), 1, "{sticky:?}");
    // loadBalancerSourceRanges filter a pod by its own address (kube-proxy >= 1.25), not the
    // node's: the hook leaves such a connection to the packet path, which sees the pod's. The
    // open LoadBalancer's range holds node-a's address, not the pod's.
    let open = ask_briefly(inside, &format!("{LB_OPEN_IP}:80"));
    assert_eq!(open, [Answer::Error("timeout".into())], "{open:?}");
    let stats = c.node(A).lbctl_json(&["stats"]).expect("lbctl stats");
    assert_eq!(stats["socket_lb"]["mode"], "all", "{stats}");
}

/// A dual-stack Service (IPv6 first) and an IPv6-only one without endpoints, beside `web`.
fn dual_stack_objects() -> Vec<(&'static str, String)> {
    let web6 = service(
        "web6",
        "",
        &format!(
            "  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n  \
             clusterIP: fd00:96::20\n  clusterIPs: [\"fd00:96::20\", 10.96.0.20]\n  \
             externalIPs: [\"{HELD_IP6}\", \"{FOREIGN_IP6}\"]\n  ports:\n  \
             - {{name: http, port: 80, targetPort: 8080, nodePort: 30090}}\n  \
             - {{name: dns, port: 53, targetPort: 8080, protocol: UDP, nodePort: 30090}}\n"
        ),
    );
    let ports = "[{name: http, port: 8080}, {name: dns, port: 8080, protocol: UDP}]";
    let web6 =
        web6 + &slice6(
            "web6",
            "web6-v6",
            ports,
            &(ready(A1_6, A) + &ready(B1_6, B)),
        ) + &slice("web6", "web6-v4", ports, &(ready(A1, A) + &ready(B1, B)));
    let empty6 = service(
        "empty6",
        "",
        "  ipFamilies: [IPv6]\n  clusterIP: fd00:96::21\n  clusterIPs: [\"fd00:96::21\"]\n  \
         ports:\n  - {port: 80, targetPort: 8080}\n",
    ) + &slice6("empty6", "empty6-1", "[{port: 8080}]", "");
    let both6 = || ready(A1_6, A) + &ready(B1_6, B);
    let sticky6 = service(
        "sticky6",
        "",
        "  ipFamilies: [IPv6]\n  clusterIP: fd00:96::22\n  clusterIPs: [\"fd00:96::22\"]\n  \
         sessionAffinity: ClientIP\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    ) + &slice6("sticky6", "sticky6-1", "[{port: 8080}]", &both6());
    // Its only endpoint is node-a itself (a hostNetwork pod, the API server on a control-plane
    // node), by its IPv6 address.
    let host6 = service(
        "host6",
        "",
        "  ipFamilies: [IPv6]\n  clusterIP: fd00:96::25\n  clusterIPs: [\"fd00:96::25\"]\n  \
         ports:\n  - {port: 80, targetPort: 8082}\n",
    ) + &slice6("host6", "host6-1", "[{port: 8082}]", &ready(A_IP6, A));
    let ranged6 = |name: &str, n: u16, ip: &str, range: &str| {
        let spec = format!(
            "  type: LoadBalancer\n  ipFamilies: [IPv6]\n  clusterIP: fd00:96::{n}\n  \
             clusterIPs: [\"fd00:96::{n}\"]\n  loadBalancerSourceRanges: [\"{range}\"]\n  \
             ports:\n  - {{port: 80, targetPort: 8080, nodePort: {}}}\nstatus:\n  \
             loadBalancer: {{ingress: [{{ip: \"{ip}\"}}]}}\n",
            30000 + n,
        );
        service(name, "", &spec) + &slice6(name, &format!("{name}-1"), "[{port: 8080}]", &both6())
    };
    vec![
        ("web.yaml", web(&(ready(A1, A) + &ready(B1, B)))),
        ("web6.yaml", web6),
        ("empty6.yaml", empty6),
        ("sticky6.yaml", sticky6),
        ("host6.yaml", host6),
        // The node's connections pass only where a range holds its IPv6 address (2001:db8::10).
        (
            "open6.yaml",
            ranged6("open6", 23, LB_OPEN_IP6, "2001:db8::/64"),
        ),
        (
            "closed6.yaml",
            ranged6("closed6", 24, LB_CLOSED_IP6, "2001:db8:ffff::/48"),
        ),
    ]
}

/// IPv6 Services are served at connect time, by the same hooks: the node's sockets and (with
/// `--socket-lb all`) pods' reach an IPv6 ClusterIP over TCP and both kinds of UDP, and a
/// NodePort on the node's IPv6 address, with the Service as the peer they see; the dual-stack
/// Service answers on its IPv4 ClusterIP too; an IPv6 Service without endpoints is refused at
/// once; session affinity, externalIPs and LoadBalancer IPs (with source ranges) as for IPv4.
/// lb has no IPv6 packet path yet: this is what serves IPv6 Services.
#[test]
fn ipv6_services_are_served_at_connect_time() {
    let objects = dual_stack_objects();
    let refs: Vec<(&str, &str)> = objects.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let Some(c) = cluster("socket-lb-ipv6", &refs, &["--socket-lb", "all"]) else {
        return;
    };
    let node = &c.node(A).ns;
    let pod = &c.pod("a2").ns;
    let cluster_ip = "[fd00:96::20]:80";
    for ns in [node, pod] {
        let tcp = ["--addr", cluster_ip, "--count", "40"];
        until_pods(ns, &tcp, cluster_ip, &["a1", "b1"]);
    }
    let dns = "[fd00:96::20]:53";
    let udp = ["--udp", "--addr", dns, "--count", "40"];
    until_pods(node, &udp, dns, &["a1", "b1"]);
    let unconnected = ask(node, &[&udp[..], &["--unconnected"]].concat());
    assert!(!pods(&unconnected, dns).is_empty(), "{unconnected:?}");
    let nodeport = format!("[{A_IP6}]:30090");
    let np = ["--addr", &nodeport, "--count", "40"];
    until_pods(node, &np, &nodeport, &["a1", "b1"]);
    // The same Service's IPv4 ClusterIP.
    let v4 = ["--addr", "10.96.0.20:80", "--count", "40"];
    until_pods(pod, &v4, "10.96.0.20:80", &["a1", "b1"]);

    let t = Instant::now();
    let refused = ask(node, &["--addr", "[fd00:96::21]:80"]);
    assert_eq!(refused, [Answer::Error("refused".into())]);
    assert!(t.elapsed() < scaled(Duration::from_millis(500)));

    // lbctl shows the IPv6 frontends with their translations.
    let (socket, _) = counters(&c, A, "fd00:96::20", 80, "TCP");
    let (socket_b, _) = counters(&c, B, "fd00:96::20", 80, "TCP");
    assert!(
        socket + socket_b >= 80,
        "socket translations {socket} + {socket_b}"
    );
    // A pod outside the cgroup is not translated (no IPv6 packet path): it gets no answer.
    let outside = c.pod("a2").ns.exec_unchecked(
        ECHO,
        ["request", "--addr", cluster_ip, "--timeout-ms", "300"],
    );
    assert!(!outside.expect("lb-echo").status.success());

    // Session affinity: the node's sockets (one client: its IPv6 address) and a pod's (one
    // client: its network namespace) each stay with one backend; 30 random picks of two would
    // all agree once in 2^29.
    let sticky = "[fd00:96::22]:80";
    for ns in [node, pod] {
        let answers = ask(ns, &["--addr", sticky, "--count", "30"]);
        assert_eq!(pods(&answers, sticky).len(), 1, "{answers:?}");
    }
    // lbctl shows the entries, with IPv6 backends: one per client. (Both agents' hooks act in
    // the lab's one cgroup, whichever runs first translates: an entry may be in either's maps,
    // and to node-b's agent node-a's sockets are a pod's.)
    let rows: Vec<serde_json::Value> = [A, B]
        .iter()
        .flat_map(|n| {
            let rows = c.node(n).lbctl_json(&["affinity"]).expect("lbctl affinity");
            rows.as_array().expect("rows").clone()
        })
        .filter(|r| {
            r["service"]
                .as_str()
                .is_some_and(|s| s.ends_with("/sticky6"))
        })
        .collect();
    assert!(rows.len() >= 2, "{rows:#?}");
    assert!(
        rows.iter()
            .any(|r| r["client"].is_null() && r["client_netns"].is_u64()),
        "{rows:#?}"
    );
    for r in &rows {
        let ip = r["backend"]["ip"].as_str().unwrap_or_default();
        assert!([A1_6, B1_6].contains(&ip), "{r:#}");
    }
    // A Service whose endpoint is the node: from the node itself, from a pod on it and from a
    // pod on the other node.
    let _server = c
        .node(A)
        .ns
        .serve_echo_on("node-a", format!("[{A_IP6}]:8082").parse().unwrap(), false)
        .expect("node-a's own server");
    let host = "[fd00:96::25]:80";
    for ns in [node, pod, &c.pod("b1").ns] {
        until_pods(ns, &["--addr", host, "--count", "5"], host, &["node-a"]);
    }
    // externalIPs and LoadBalancer IPs: served where node-a holds them (addresses added after
    // the agent started), not where it does not
    // (CVE-2020-8554); the node's own connections to a LoadBalancer IP pass only where a source
    // range holds its IPv6 address.
    for ip in [HELD_IP6, LB_OPEN_IP6, LB_CLOSED_IP6] {
        node.sh(&format!("ip -6 addr add {ip}/128 dev lo"))
            .expect("held address");
    }
    let held = format!("[{HELD_IP6}]:80");
    until_pods(
        node,
        &["--addr", &held, "--count", "20"],
        &held,
        &["a1", "b1"],
    );
    let foreign = ask_briefly(node, &format!("[{FOREIGN_IP6}]:80"));
    assert!(matches!(foreign[..], [Answer::Error(_)]), "{foreign:?}");
    let open = format!("[{LB_OPEN_IP6}]:80");
    until_pods(
        node,
        &["--addr", &open, "--count", "20"],
        &open,
        &["a1", "b1"],
    );
    let closed = ask_briefly(node, &format!("[{LB_CLOSED_IP6}]:80"));
    assert_eq!(closed, [Answer::Error("timeout".into())], "{closed:?}");
}
