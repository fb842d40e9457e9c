//! The proxy-relevant Service tests of Kubernetes' test/e2e/network (service.go, loadbalancer.go),
//! replayed on a two-node lab cluster ([`lb_tests::cluster_lab`]) with the real lb-agent on each
//! node in manifests mode: objects are written and deleted as `kubectl` would change the API
//! server, pods and an outside client send real TCP and UDP. Each test names the upstream test it
//! mirrors. What the upstream tests do from hostNetwork pods or the node itself goes through the
//! socket hooks and is tested in lab_socket_lb.rs.
use std::net::SocketAddr;

use lb_tests::{
    agent_lab::{addr, until_answer},
    cluster_lab::{
        ready, service, slice, spread, terminating, until_error, until_frontend, Cluster, APPLY,
        CLIENT_IP,
    },
    http::{http_get, until_reply},
    lab::{require_privileged, RequestError},
};

const A: &str = "node-a";
const B: &str = "node-b";
const A_IP: &str = "192.0.2.10";
const B_IP: &str = "192.0.2.20";
const A1: &str = "10.244.1.5";
const A2: &str = "10.244.1.6";
const B1: &str = "10.244.2.5";

/// The lab for `test` with `objects` written before the agents start; None (skip) without root.
fn cluster(test: &str, objects: &[(&str, &str)]) -> Option<Cluster> {
    if !require_privileged("e2e_services") {
        return None;
    }
    let c = Cluster::start(test, env!("CARGO_BIN_EXE_lb-echo"), objects).expect("cluster lab");
    Some(c)
}

/// `spec:` lines of a ClusterIP service at `ip` with one unnamed TCP port 80 → 8080.
fn clusterip_spec(ip: &str) -> String {
    format!("  clusterIP: {ip}\n  ports:\n  - {{port: 80, targetPort: 8080}}\n")
}

/// The slice ports matching [`clusterip_spec`].
const PORT_8080: &str = "[{port: 8080}]";

/// A service `name` with [`clusterip_spec`] and one slice holding `endpoints`.
fn clusterip_service(name: &str, ip: &str, endpoints: &str) -> String {
    service(name, "", &clusterip_spec(ip))
        + &slice(name, &format!("{name}-1"), PORT_8080, endpoints)
}

/// Mirrors "[sig-network] Services should serve a basic endpoint from pods": endpoints come and
/// go, and the service follows (here with pods on both nodes, reached from a pod on node-b).
#[test]
fn serve_basic_endpoint_from_pods() {
    let vip = "10.96.0.11";
    let svc = |eps: &str| clusterip_service("basic", vip, eps);
    let Some(c) = cluster("e2e-basic", &[("basic.yaml", &svc(""))]) else {
        return;
    };
    let from = &c.pod("b2").ns;
    let to = addr(vip, 80);
    until_error(from, to, false, RequestError::Refused);

    c.write("basic.yaml", &svc(&ready(A1, A)));
    until_answer(from, to, false, Some("a1"), APPLY);

    c.write("basic.yaml", &svc(&(ready(A1, A) + &ready(B1, B))));
    until_frontend(c.node(B), vip, 80, false, Some(&[A1, B1]));
    spread(from, to, false, &["a1", "b1"]);

    c.write("basic.yaml", &svc(&ready(B1, B)));
    until_frontend(c.node(B), vip, 80, false, Some(&[B1]));
    spread(from, to, false, &["b1"]);

    c.write("basic.yaml", &svc(""));
    until_error(from, to, false, RequestError::Refused);
}

/// Mirrors "Services should serve multiport endpoints from pods": two service ports with named
/// target ports, each resolved to a different pod and container port in its own slice.
#[test]
fn serve_multiport_endpoints_with_named_target_ports() {
    let vip = "10.96.0.12";
    let spec = format!(
        "  clusterIP: {vip}\n  ports:\n  \
         - {{name: portname1, port: 80, targetPort: svc1}}\n  \
         - {{name: portname2, port: 81, targetPort: svc2}}\n"
    );
    let objects = service("multi", "", &spec)
        + &slice(
            "multi",
            "multi-1",
            "[{name: portname1, port: 8080}]",
            &ready(A1, A),
        )
        + &slice(
            "multi",
            "multi-2",
            "[{name: portname2, port: 8081}]",
            &ready(B1, B),
        );
    let Some(c) = cluster("e2e-multiport", &[("multi.yaml", &objects)]) else {
        return;
    };
    for from in ["a2", "b2"] {
        let from = &c.pod(from).ns;
        until_answer(from, addr(vip, 80), false, Some("a1"), APPLY);
        until_answer(from, addr(vip, 81), false, Some("b1/8081"), APPLY);
        spread(from, addr(vip, 80), false, &["a1"]);
        spread(from, addr(vip, 81), false, &["b1/8081"]);
    }
}

/// Mirrors "Services should be able to create a functioning NodePort service": the node port
/// answers on every node, on every address of the node (here one added while the agent runs).
#[test]
fn nodeport_answers_on_every_node_address() {
    let spec = "  type: NodePort\n  clusterIP: 10.96.0.13\n  ports:\n  \
                - {port: 80, targetPort: 8080, nodePort: 30113}\n";
    let objects =
        service("np", "", spec) + &slice("np", "np-1", PORT_8080, &(ready(A1, A) + &ready(B1, B)));
    let Some(c) = cluster("e2e-nodeport", &[("np.yaml", &objects)]) else {
        return;
    };
    let second = "192.0.2.11";
    c.node(A)
        .ns
        .add_addr("eth0", &format!("{second}/24"))
        .expect("second address");
    for (node, ip) in [(A, A_IP), (A, second), (B, B_IP)] {
        until_frontend(c.node(node), ip, 30113, false, Some(&[A1, B1]));
        spread(&c.client, addr(ip, 30113), false, &["a1", "b1"]);
    }
}

/// Mirrors "Services should be able to change the type from ExternalName to ClusterIP", "... from
/// ClusterIP to NodePort" (via "from ExternalName to NodePort") and "... from NodePort to
/// ExternalName": each type serves exactly what it should, on both nodes.
#[test]
fn type_changes_externalname_clusterip_nodeport() {
    let vip = "10.96.0.14";
    let external_name = "  type: ExternalName\n  externalName: example.com\n";
    let clusterip = clusterip_spec(vip);
    let nodeport = format!(
        "  type: NodePort\n  clusterIP: {vip}\n  ports:\n  \
         - {{port: 80, targetPort: 8080, nodePort: 30114}}\n"
    );
    let eps = slice("svc", "svc-1", PORT_8080, &ready(A1, A));
    let with = |spec: &str| service("svc", "", spec) + &eps;
    let Some(c) = cluster("e2e-types", &[("svc.yaml", &with(external_name))]) else {
        return;
    };
    let from = &c.pod("b2").ns;
    for node in &c.nodes {
        until_frontend(node, vip, 80, false, None);
    }

    c.write("svc.yaml", &with(&clusterip));
    until_answer(from, addr(vip, 80), false, Some("a1"), APPLY);
    for (node, ip) in [(A, A_IP), (B, B_IP)] {
        until_frontend(c.node(node), ip, 30114, false, None);
    }

    c.write("svc.yaml", &with(&nodeport));
    for ip in [A_IP, B_IP] {
        until_answer(&c.client, addr(ip, 30114), false, Some("a1"), APPLY);
    }
    until_answer(from, addr(vip, 80), false, Some("a1"), APPLY);

    c.write("svc.yaml", &with(external_name));
    for ip in [A_IP, B_IP] {
        until_error(&c.client, addr(ip, 30114), false, RequestError::Refused);
    }
    for node in &c.nodes {
        until_frontend(node, vip, 80, false, None);
    }
}

/// Mirrors "Services should serve endpoints on same port and different protocols" and "should be
/// able to update service type to NodePort listening on same port number but different
/// protocols": port 53 (and node port 30153) on TCP and UDP, each removable alone.
#[test]
fn same_port_on_tcp_and_udp_each_removable_alone() {
    let vip = "10.96.0.15";
    let tcp = "  - {name: tcp, port: 53, targetPort: 8080, protocol: TCP, nodePort: 30153}\n";
    let udp = "  - {name: udp, port: 53, targetPort: 8080, protocol: UDP, nodePort: 30153}\n";
    let svc = |ports: &[&str]| {
        let spec = format!(
            "  type: NodePort\n  clusterIP: {vip}\n  ports:\n{}",
            ports.concat()
        );
        let slice_ports = "[{name: tcp, port: 8080, protocol: TCP}, \
                           {name: udp, port: 8080, protocol: UDP}]";
        service("dns", "", &spec) + &slice("dns", "dns-1", slice_ports, &ready(A1, A))
    };
    let Some(c) = cluster("e2e-protocols", &[("dns.yaml", &svc(&[tcp, udp]))]) else {
        return;
    };
    let from = &c.pod("b2").ns;
    let check = |tcp_served: bool, udp_served: bool| {
        for (udp, served) in [(false, tcp_served), (true, udp_served)] {
            let want = served.then_some("a1");
            until_answer(from, addr(vip, 53), udp, want, APPLY);
            until_answer(&c.client, addr(A_IP, 30153), udp, want, APPLY);
            until_answer(&c.client, addr(B_IP, 30153), udp, want, APPLY);
        }
    };
    check(true, true);
    c.write("dns.yaml", &svc(&[tcp]));
    check(true, false);
    c.write("dns.yaml", &svc(&[udp]));
    check(false, true);
    c.write("dns.yaml", &svc(&[tcp, udp]));
    check(true, true);
}

/// Mirrors "Services should allow pods to hairpin back to themselves through services".
#[test]
fn pod_hairpins_to_itself_through_its_service() {
    let vip = "10.96.0.16";
    let objects = clusterip_service("hairpin", vip, &ready(A1, A));
    let Some(c) = cluster("e2e-hairpin", &[("hairpin.yaml", &objects)]) else {
        return;
    };
    let a1 = &c.pod("a1").ns;
    until_answer(a1, addr(vip, 80), false, Some("a1"), APPLY);
    spread(a1, addr(vip, 80), false, &["a1"]);
}

/// Mirrors "Services should be possible to connect to a service via ExternalIP when the external
/// IP is not assigned to a node": the client routes the externalIP to node-a, which holds no
/// such address.
#[test]
fn external_ip_not_assigned_to_any_node() {
    let external_ip = "203.0.113.50";
    let spec = format!(
        "  clusterIP: 10.96.0.17\n  externalIPs: [{external_ip}]\n  ports:\n  \
         - {{port: 80, targetPort: 8080}}\n"
    );
    let objects = service("ext", "", &spec)
        + &slice("ext", "ext-1", PORT_8080, &(ready(A1, A) + &ready(B1, B)));
    let Some(c) = cluster("e2e-externalip", &[("ext.yaml", &objects)]) else {
        return;
    };
    c.client
        .add_route(&format!("{external_ip}/32"), A_IP)
        .expect("client route to the external IP");
    until_frontend(c.node(A), external_ip, 80, false, Some(&[A1, B1]));
    spread(&c.client, addr(external_ip, 80), false, &["a1", "b1"]);
}

/// Mirrors "Services should release NodePorts on delete": once the service is deleted its node
/// port answers nowhere (the nodes' own stacks refuse it: nothing listens there).
#[test]
fn deleted_nodeport_no_longer_answers() {
    let spec = "  type: NodePort\n  clusterIP: 10.96.0.18\n  ports:\n  \
                - {port: 80, targetPort: 8080, nodePort: 30118}\n";
    let objects = service("gone", "", spec) + &slice("gone", "gone-1", PORT_8080, &ready(B1, B));
    let Some(c) = cluster("e2e-release", &[("gone.yaml", &objects)]) else {
        return;
    };
    for ip in [A_IP, B_IP] {
        until_answer(&c.client, addr(ip, 30118), false, Some("b1"), APPLY);
    }
    c.delete("gone.yaml");
    for ip in [A_IP, B_IP] {
        until_error(&c.client, addr(ip, 30118), false, RequestError::Refused);
    }
    for node in &c.nodes {
        let services = node.lbctl_json(&["services"]).expect("lbctl");
        assert_eq!(services, serde_json::json!([]), "{}", node.name);
    }
}

/// Mirrors "Services should implement service.kubernetes.io/service-proxy-name" and "should
/// implement service.kubernetes.io/headless": either label hands the service to someone else
/// (no frontend on any node); removing it brings the service back.
#[test]
fn proxy_name_and_headless_labels_switch_a_service_off_and_on() {
    let vip = "10.96.0.19";
    let svc = |labels: &str| {
        service("labelled", labels, &clusterip_spec(vip))
            + &slice("labelled", "labelled-1", PORT_8080, &ready(A1, A))
    };
    let Some(c) = cluster("e2e-labels", &[("svc.yaml", &svc(""))]) else {
        return;
    };
    let from = &c.pod("b2").ns;
    until_answer(from, addr(vip, 80), false, Some("a1"), APPLY);
    for label in [
        "service.kubernetes.io/service-proxy-name: foo-bar",
        "service.kubernetes.io/headless: ''",
    ] {
        c.write("svc.yaml", &svc(&format!("labels: {{{label}}}")));
        for node in &c.nodes {
            until_frontend(node, vip, 80, false, None);
        }
        until_answer(from, addr(vip, 80), false, None, APPLY);
        c.write("svc.yaml", &svc(""));
        until_answer(from, addr(vip, 80), false, Some("a1"), APPLY);
    }
}

/// Mirrors "Services should be rejected when no endpoints exist": TCP gets a reset and UDP an
/// ICMP port unreachable at once, through the ClusterIP and the node ports of both nodes.
#[test]
fn no_endpoints_is_connection_refused() {
    let vip = "10.96.0.20";
    let spec = format!(
        "  type: NodePort\n  clusterIP: {vip}\n  ports:\n  \
         - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30120}}\n  \
         - {{name: udp, port: 80, targetPort: 8080, protocol: UDP, nodePort: 30120}}\n"
    );
    let objects = service("empty", "", &spec) + &slice("empty", "empty-1", "[]", "");
    let Some(c) = cluster("e2e-reject", &[("empty.yaml", &objects)]) else {
        return;
    };
    for udp in [false, true] {
        for node in &c.nodes {
            until_frontend(node, vip, 80, udp, Some(&[]));
        }
        let targets: [(&lb_tests::lab::Netns, SocketAddr); 3] = [
            (&c.pod("a2").ns, addr(vip, 80)),
            (&c.client, addr(A_IP, 30120)),
            (&c.client, addr(B_IP, 30120)),
        ];
        for (from, to) in targets {
            let started = std::time::Instant::now();
            let got = from.request(to, udp, std::time::Duration::from_secs(2));
            assert_eq!(got, Err(RequestError::Refused), "{to} udp={udp}");
            let took = started.elapsed();
            assert!(
                took.as_millis() < 500,
                "{to} udp={udp}: refused after {took:?}"
            );
        }
    }
}

/// Mirrors "Services should respect internalTrafficPolicy=Local Pod to Pod": the only endpoint
/// is on node-a; a pod there reaches it, a pod on node-b gets nothing (dropped, not refused).
#[test]
fn internal_traffic_policy_local_serves_only_the_same_node() {
    let vip = "10.96.0.21";
    let spec = format!("  internalTrafficPolicy: Local\n{}", clusterip_spec(vip));
    let objects = service("itp", "", &spec) + &slice("itp", "itp-1", PORT_8080, &ready(A1, A));
    let Some(c) = cluster("e2e-itp-local", &[("itp.yaml", &objects)]) else {
        return;
    };
    until_answer(&c.pod("a2").ns, addr(vip, 80), false, Some("a1"), APPLY);
    until_frontend(c.node(B), vip, 80, false, Some(&[]));
    let got = c
        .pod("b2")
        .ns
        .request(addr(vip, 80), false, std::time::Duration::from_secs(1));
    assert_eq!(got, Err(RequestError::Timeout), "from node-b");
}

/// `e2e/local`: LoadBalancer with externalTrafficPolicy Local, node port 30122 and health check
/// node port 32122, endpoints as given.
fn etp_local_service(endpoints: &str) -> String {
    let spec = "  type: LoadBalancer\n  clusterIP: 10.96.0.22\n  externalTrafficPolicy: Local\n  \
                healthCheckNodePort: 32122\n  ports:\n  \
                - {port: 80, targetPort: 8080, nodePort: 30122}\n";
    service("local", "", spec) + &slice("local", "local-1", PORT_8080, endpoints)
}

/// Polls the health check node port of `node_ip` from the client until it returns `status`.
fn until_health(c: &Cluster, node_ip: &str, status: u16) -> String {
    let hc = format!("{node_ip}:32122");
    until_reply(&c.client, &hc, "/", APPLY, |r| r.status == status).body
}

/// Mirrors "ESIPP should only target nodes with endpoints", "ESIPP should work for type=NodePort"
/// and "ESIPP should handle updates to ExternalTrafficPolicy field" as far as the proxy goes:
/// only nodes with an endpoint answer, keeping the client's address, and the health check node
/// port says 200 there and 503 elsewhere; moving the endpoint moves both.
#[test]
fn external_traffic_policy_local_only_nodes_with_endpoints() {
    let Some(c) = cluster(
        "e2e-etp-local",
        &[("local.yaml", &etp_local_service(&ready(A1, A)))],
    ) else {
        return;
    };
    let served = |on: &str, off: &str, pod: &str| {
        until_answer(&c.client, addr(on, 30122), false, Some(pod), APPLY);
        for reply in spread(&c.client, addr(on, 30122), false, &[pod]) {
            assert_eq!(
                reply.peer.ip().to_string(),
                CLIENT_IP,
                "client address kept"
            );
        }
        let body = until_health(&c, on, 200);
        assert!(body.contains("\"localEndpoints\": 1"), "{body}");
        let body = until_health(&c, off, 503);
        assert!(body.contains("\"localEndpoints\": 0"), "{body}");
        let got = c
            .client
            .request(addr(off, 30122), false, std::time::Duration::from_secs(1));
        assert_eq!(got, Err(RequestError::Timeout), "{off}: dropped");
    };
    served(A_IP, B_IP, "a1");
    c.write("local.yaml", &etp_local_service(&ready(B1, B)));
    served(B_IP, A_IP, "b1");
}

/// Mirrors "Services should fail health check node port if there are only terminating
/// endpoints" and "should fallback to local terminating endpoints when there are no ready
/// endpoints with externalTrafficPolicy=Local": the health check says 503 (so load balancers
/// drain the node) while the node port still serves the terminating pod.
#[test]
fn health_check_fails_with_only_terminating_endpoints() {
    let Some(c) = cluster(
        "e2e-hc-term",
        &[("local.yaml", &etp_local_service(&ready(A1, A)))],
    ) else {
        return;
    };
    until_health(&c, A_IP, 200);
    until_answer(&c.client, addr(A_IP, 30122), false, Some("a1"), APPLY);
    c.write("local.yaml", &etp_local_service(&terminating(A1, A)));
    let body = until_health(&c, A_IP, 503);
    assert!(body.contains("\"localEndpoints\": 0"), "{body}");
    spread(&c.client, addr(A_IP, 30122), false, &["a1"]);
    let outside = http_get(&c.client, &format!("{A_IP}:32122"), "/").expect("probe");
    assert_eq!(outside.status, 503, "{outside:?}");
}

/// Mirrors "Services should preserve source pod IP for traffic thru service cluster IP": the
/// backend sees the calling pod's own address, whether it is on the same node or another.
#[test]
fn source_pod_ip_preserved_through_cluster_ip() {
    let vip = "10.96.0.23";
    let objects = clusterip_service("srcip", vip, &(ready(A1, A) + &ready(B1, B)));
    let Some(c) = cluster("e2e-source-ip", &[("srcip.yaml", &objects)]) else {
        return;
    };
    until_frontend(c.node(A), vip, 80, false, Some(&[A1, B1]));
    for reply in spread(&c.pod("a2").ns, addr(vip, 80), false, &["a1", "b1"]) {
        assert_eq!(reply.peer.ip().to_string(), A2, "seen by {}", reply.name);
    }
}
