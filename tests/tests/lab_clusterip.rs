//! Real TCP and UDP through a ClusterIP from a pod, in network namespaces: one node, two pods on
//! host-side veths (routed /32s, as Calico does), lb_tc_pod on the pod interfaces, maps programmed
//! through the dataplane library.
use lb::dataplane::ServiceMaps;
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb::dataplane::{Dataplane, Options};
use lb_common::{Backend4, BE_F_LOCAL, PROTO_TCP, PROTO_UDP};
use lb_tests::{
    lab::{require_privileged, Lab, Netns, RequestError},
    topology::program_clusterip,
};

fn addr(s: &str) -> u32 {
    u32::from_ne_bytes(s.parse::<Ipv4Addr>().expect("ip").octets())
}

fn pod(lab: &Lab, node: &Netns, name: &str, ip: &str, host_if: &str) -> Netns {
    lb_tests::topology::pod(lab, node, name, ip, host_if).expect("pod")
}

fn program(dp: &mut Dataplane, id: u32, proto: u8, port: u16, backends: &[u32]) {
    program_clusterip(dp, id, "10.96.0.10", proto, port, backends).expect("program");
}

#[test]
fn pod_reaches_clusterip_over_tcp_and_udp_and_is_refused_without_endpoints() {
    if !require_privileged("lab_clusterip") {
        return;
    }
    let lab = Lab::new("lab-cip").expect("lab");
    lab.set_echo_bin(env!("CARGO_BIN_EXE_lb-echo"));
    let node = lab.netns("node").expect("node");
    node.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    let client = pod(&lab, &node, "client", "10.244.1.5", "h1");
    let server = pod(&lab, &node, "server", "10.244.1.7", "h2");
    let pin = lab.pin_path("node");
    node.in_netns(move || {
        let opts = Options {
            pin_path: pin,
            capacities: vec![],
        };
        let mut dp = Dataplane::open(&opts).expect("dataplane");
        dp.attach_pod("h1").expect("attach h1");
        dp.attach_pod("h2").expect("attach h2");
        let be = Backend4 {
            addr: addr("10.244.1.7"),
            port: 8080u16.to_be(),
            flags: BE_F_LOCAL,
            _pad: 0,
        };
        ServiceMaps::<Ipv4Addr>::set_backend(&mut dp.maps, 1, &be).expect("backend");
        program(&mut dp, 1, PROTO_TCP, 80, &[1]);
        program(&mut dp, 2, PROTO_UDP, 53, &[1]);
        program(&mut dp, 3, PROTO_TCP, 81, &[]);
        // Dropping the dataplane leaves programs and maps pinned: traffic keeps flowing.
    })
    .expect("program the node");
    let _tcp = server.serve_echo("server", 8080, false).expect("tcp echo");
    let _udp = server.serve_echo("server", 8080, true).expect("udp echo");

    for udp in [false, true] {
        let port = if udp { 53 } else { 80 };
        let vip: SocketAddr = format!("10.96.0.10:{port}").parse().unwrap();
        let reply = client
            .request(vip, udp, Duration::from_secs(2))
            .expect("reply through the ClusterIP");
        assert_eq!(reply.name, "server", "udp={udp}: the backend answered");
        assert_eq!(
            reply.peer.ip().to_string(),
            "10.244.1.5",
            "udp={udp}: pod source IP preserved"
        );
    }

    let started = Instant::now();
    let refused = client.request(
        "10.96.0.10:81".parse().unwrap(),
        false,
        Duration::from_secs(2),
    );
    assert!(
        matches!(refused, Err(RequestError::Refused)),
        "no endpoints: refused, got {refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused within 100 ms: {:?}",
        started.elapsed()
    );
}
