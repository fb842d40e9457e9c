//! A Service whose endpoint is a node's own address, as the `kubernetes` Service is on a
//! control-plane node (kind, k3s, kubeadm) and any Service of hostNetwork pods: from a pod on that
//! node the node's reply leaves through the pod's interface, where only lb's TC egress program
//! sees it; from a pod on another node the reply arrives on that node's external interface.
use lb_tests::{
    agent_lab::{addr, until_answer},
    cluster_lab::{apiserver_service, spread, Cluster, APPLY},
    lab::require_privileged,
};

const A_IP: &str = "192.0.2.10";

#[test]
fn a_service_whose_endpoint_is_the_node_answers_pods_everywhere() {
    if !require_privileged("lab_node_endpoint") {
        return;
    }
    let api = apiserver_service(A_IP, "node-a");
    let c = Cluster::start(
        "node-endpoint",
        env!("CARGO_BIN_EXE_lb-echo"),
        &[("api.yaml", &api)],
    )
    .expect("cluster lab");
    // The "API server": a process of node-a's own network namespace.
    let _server = c.node("node-a").ns.serve_echo("node-a", 6443, false);
    let vip = addr("10.96.0.1", 443);
    for pod in ["a1", "b1"] {
        until_answer(&c.pod(pod).ns, vip, false, Some("node-a"), APPLY);
        // Every new connection too, not only the first.
        spread(&c.pod(pod).ns, vip, false, &["node-a"]);
    }
}
