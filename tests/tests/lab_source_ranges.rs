//! loadBalancerSourceRanges end to end, with the real agent: a LoadBalancer IP answers a client
//! inside the ranges; edited so the client is outside them, new connections to the LoadBalancer
//! IP time out (dropped, not refused) while the Service's NodePort still answers it, and lbctl
//! shows the ranges and counts the drops.
use std::time::Duration;

use lb_tests::{
    agent_lab::{addr, until_answer, AgentLab, NODE, NODE_IP},
    lab::{require_privileged, RequestError},
};

const LB_IP: &str = "203.0.113.10";
const POD1: &str = "10.244.1.5";

/// `shop/edge`: LoadBalancer at [`LB_IP`] (NodePort 30443) to pod1:8080, with `ranges`.
fn edge(ranges: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: edge, namespace: shop}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  loadBalancerSourceRanges: [{ranges}]
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30443}}]
status:
  loadBalancer:
    ingress: [{{ip: {LB_IP}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: edge-1, namespace: shop, labels: {{kubernetes.io/service-name: edge}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [{POD1}], nodeName: {NODE}}}
"
    )
}

#[test]
fn a_load_balancer_ip_answers_only_clients_in_its_source_ranges() {
    if !require_privileged("lab_source_ranges") {
        return;
    }
    let s = AgentLab::new(
        "lab-src-ranges",
        env!("CARGO_BIN_EXE_lb-echo"),
        &[("pod1", POD1, "h1")],
    )
    .expect("lab");
    s.client
        .add_route(&format!("{LB_IP}/32"), NODE_IP)
        .expect("client route to the LoadBalancer IP");
    // The client is 192.0.2.100.
    s.write("edge.yaml", &edge("192.0.2.96/29, 198.51.100.0/24"));
    let _agent = s.start_agent("agent").expect("lb-agent");
    let (lb, nodeport) = (addr(LB_IP, 80), addr(NODE_IP, 30443));
    let t = Duration::from_secs(10);
    until_answer(&s.client, lb, false, Some("pod1"), t);

    let services = s.lbctl_json(&["services"]).expect("lbctl services");
    let entry = |kind: &str| {
        services
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["frontend"]["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} in {services}"))
    };
    let ranges = &entry("LoadBalancer")["source_ranges"];
    assert_eq!(
        ranges,
        &serde_json::json!(["192.0.2.96/29", "198.51.100.0/24"])
    );
    assert_eq!(entry("NodePort")["source_ranges"], serde_json::json!([]));

    // The client is outside the ranges now: dropped at the LoadBalancer IP (a timeout), served
    // at the NodePort.
    s.write("edge.yaml", &edge("198.51.100.0/24"));
    until_answer(&s.client, lb, false, None, t);
    let refused_or_not = s.client.request(lb, false, Duration::from_millis(700));
    assert_eq!(
        refused_or_not,
        Err(RequestError::Timeout),
        "dropped, not refused"
    );
    until_answer(&s.client, nodeport, false, Some("pod1"), t);

    let stats = s.lbctl_json(&["stats"]).expect("lbctl stats");
    let drops: u64 = stats["frontends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["frontend"]["ip"] == LB_IP)
        .map(|f| {
            f["source_range_drops"]
                .as_u64()
                .expect("source_range_drops")
        })
        .sum();
    assert!(drops >= 1, "drops counted: {stats}");
}
