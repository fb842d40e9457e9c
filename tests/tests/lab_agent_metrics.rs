//! lb-agent's health and metrics endpoints, as Prometheus, kubelet and a cloud load balancer see
//! them: /healthz, /livez and /metrics on the default --metrics-addr (127.0.0.1:9464 in the node's
//! namespace), per-frontend packet counters after real traffic, and the kube-proxy compatible
//! healthCheckNodePort server of a LoadBalancer service with externalTrafficPolicy=Local, which
//! follows the service's local endpoints and closes when the service goes.
use std::{
    io::ErrorKind,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    agent_lab::{AgentLab, NODE, NODE_IP},
    http::{http_get, until_reply},
    lab::{poll_until, require_privileged},
};

const CLUSTER_IP: &str = "10.96.0.30";
const LB_IP: &str = "203.0.113.10";
const POD1: &str = "10.244.1.5";
/// An endpoint on another node (never reached: only its count matters here).
const REMOTE_POD: &str = "10.244.2.9";
const HC_PORT: u16 = 32000;
const METRICS: &str = "127.0.0.1:9464";

fn setup(name: &str) -> AgentLab {
    let pods = [("pod1", POD1, "h1")];
    let s = AgentLab::new(name, env!("CARGO_BIN_EXE_lb-echo"), &pods).expect("lab");
    s.client
        .add_route(&format!("{LB_IP}/32"), NODE_IP)
        .expect("client route to the LoadBalancer IP");
    s
}

/// `shop/lb`: LoadBalancer, externalTrafficPolicy Local, healthCheckNodePort 32000, TCP 80 on
/// the ingress IP to 8080 of one endpoint on `endpoint_node`.
fn lb_service(endpoint: &str, endpoint_node: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: lb, namespace: shop}}
spec:
  type: LoadBalancer
  clusterIP: {CLUSTER_IP}
  externalTrafficPolicy: Local
  healthCheckNodePort: {HC_PORT}
  ports:
  - {{name: http, port: 80, nodePort: 30081}}
status:
  loadBalancer:
    ingress: [{{ip: {LB_IP}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-1
  namespace: shop
  labels: {{kubernetes.io/service-name: lb}}
addressType: IPv4
ports:
- {{name: http, port: 8080}}
endpoints:
- {{addresses: [{endpoint}], nodeName: {endpoint_node}}}
"
    )
}

/// The value of the /metrics sample whose line starts with `prefix` (name and labels).
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn agent_serves_metrics_and_health_check_node_ports() {
    if !require_privileged("lab_agent_metrics") {
        return;
    }
    let started = Instant::now();
    let s = setup("lab-agent-metrics");
    s.write("lb.yaml", &lb_service(POD1, NODE));
    let agent = s.start_agent("agent").expect("lb-agent");
    let t = Duration::from_secs(10);

    // The agent's own endpoints.
    until_reply(&s.node, METRICS, "/livez", t, |r| r.status == 200);
    let healthz = until_reply(&s.node, METRICS, "/healthz", t, |r| r.status == 200);
    assert_eq!(healthz.body, "ok");

    // Traffic through the LoadBalancer IP, counted per service (per frontend only when asked:
    // that is 400,000 series at 50,000 services).
    let vip: SocketAddr = format!("{LB_IP}:80").parse().unwrap();
    let answered = poll_until(t, || {
        let r = s.client.request(vip, false, Duration::from_millis(300));
        r.ok().filter(|r| r.name == "pod1")
    });
    assert!(
        answered.is_some(),
        "{vip} answered by pod1\n{}",
        agent.stderr()
    );
    for _ in 0..4 {
        s.client
            .request(vip, false, Duration::from_secs(1))
            .expect("request through the LoadBalancer IP");
    }
    let packets = "lb_service_packets_total{service=\"shop/lb\"} ";
    let metrics = until_reply(&s.node, METRICS, "/metrics", t, |r| {
        sample(&r.body, packets).is_some_and(|n| n >= 5.0)
    });
    let m = &metrics.body;
    assert!(!m.contains("lb_frontend_packets"), "{m}");
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.contains("openmetrics-text")),
        "{metrics:?}"
    );
    // ClusterIP, NodePort on 192.0.2.1 and the LoadBalancer IP, each in two scopes.
    assert_eq!(sample(m, "lb_frontends "), Some(6.0), "{m}");
    assert_eq!(
        sample(m, "lb_syncs_total ").map(|n| n >= 1.0),
        Some(true),
        "{m}"
    );
    assert_eq!(
        sample(m, "lb_map_entries{map=\"LB4_FRONTENDS\"} "),
        Some(6.0),
        "{m}"
    );
    assert!(sample(m, "lb_map_capacity{map=\"LB4_FRONTENDS\"} ").is_some_and(|n| n >= 6.0));
    assert!(sample(m, "lb_programming_latency_seconds_count ").is_some_and(|n| n >= 1.0));
    assert!(sample(m, "lb_datapath_events_total{event=\"ct_new\"} ").is_some_and(|n| n >= 5.0));
    eprintln!(
        "packets through {LB_IP}:80: {:?}; datapath ct_new: {:?}",
        sample(m, packets),
        sample(m, "lb_datapath_events_total{event=\"ct_new\"} ")
    );

    // The healthCheckNodePort, from the node and from outside as a load balancer probes it.
    let hc = format!("{NODE_IP}:{HC_PORT}");
    let up = until_reply(&s.node, &hc, "/healthz", t, |r| r.status == 200);
    assert!(up.body.contains("\"localEndpoints\": 1"), "{up:?}");
    assert!(up.body.contains("\"namespace\": \"shop\""), "{up:?}");
    assert!(up.body.contains("\"name\": \"lb\""), "{up:?}");
    assert!(up.body.contains("\"serviceProxyHealthy\": true"), "{up:?}");
    assert_eq!(up.header("content-type"), Some("application/json"));
    assert_eq!(up.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(up.header("x-load-balancing-endpoint-weight"), Some("1"));
    let outside = http_get(&s.client, &hc, "/").expect("probe from the client");
    assert_eq!(outside.status, 200, "{outside:?}");
    // On IPv6 as well (a dual-stack load balancer probes either address): the server listens
    // on [::] like kube-proxy's, not on 0.0.0.0 only.
    let v6 = until_reply(&s.node, &format!("[::1]:{HC_PORT}"), "/", t, |r| {
        r.status == 200
    });
    assert!(v6.body.contains("\"localEndpoints\": 1"), "{v6:?}");

    // The only endpoint moves to another node: 503, no local endpoints.
    let edited = Instant::now();
    s.write("lb.yaml", &lb_service(REMOTE_POD, "node-b"));
    let down = until_reply(&s.node, &hc, "/", Duration::from_secs(2), |r| {
        r.status == 503
    });
    eprintln!(
        "endpoint moved → health check 503 in {:?}",
        edited.elapsed()
    );
    assert!(down.body.contains("\"localEndpoints\": 0"), "{down:?}");
    assert_eq!(down.header("x-load-balancing-endpoint-weight"), Some("0"));

    // The service goes: its port closes.
    std::fs::remove_file(s.manifests.join("lb.yaml")).expect("remove lb.yaml");
    let closed = poll_until(Duration::from_secs(2), || {
        match http_get(&s.node, &hc, "/") {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    });
    assert!(
        closed.is_some(),
        "port {HC_PORT} closed after the service was deleted"
    );
    let after = until_reply(&s.node, METRICS, "/metrics", t, |r| {
        sample(&r.body, "lb_frontends ") == Some(0.0)
    });
    assert!(
        !after.body.contains(packets),
        "the service's series is gone"
    );
    assert_eq!(
        http_get(&s.node, METRICS, "/healthz")
            .map(|r| r.status)
            .ok(),
        Some(200)
    );
    assert!(
        !agent.stderr().contains("health check port not opened"),
        "{}",
        agent.stderr()
    );
    eprintln!("lab_agent_metrics took {:?}", started.elapsed());
}

/// A CNI whose host-side pod interfaces the `--pod-iface` globs miss (AWS VPC CNI's `eni*`,
/// here `h1` against `eni*`): the agent attaches to no pod interface, and says so, in its log
/// and in `lb_local_endpoints_without_pod_interface`, counting the pods on this node; with the
/// right glob the count is 0. The second agent also exports traffic per frontend, as asked.
#[test]
fn local_endpoints_without_a_pod_interface_are_reported() {
    if !require_privileged("lab_agent_metrics") {
        return;
    }
    let s = setup("lab-agent-no-pod-iface");
    s.write("lb.yaml", &lb_service(POD1, NODE));
    let t = Duration::from_secs(10);
    let metric = "lb_local_endpoints_without_pod_interface ";
    for (glob, want, more) in [
        ("eni*", 1.0, None),
        ("h*", 0.0, Some("--metrics-per-frontend")),
    ] {
        let mut flags = vec!["--ext-iface", "eth1", "--pod-iface", glob];
        flags.extend(more);
        let agent = s.start_agent_with(glob, &flags).expect("lb-agent");
        // Synced first: the gauge's 0 before the first sync proves nothing.
        until_reply(&s.node, METRICS, "/healthz", t, |r| r.status == 200);
        let reply = until_reply(&s.node, METRICS, "/metrics", t, |r| {
            sample(&r.body, metric) == Some(want)
        });
        assert_eq!(
            sample(&reply.body, metric),
            Some(want),
            "--pod-iface {glob}"
        );
        let frontend = "lb_frontend_packets_total{service=\"shop/lb\",port_name=\"http\",";
        let per_frontend = reply.body.lines().any(|l| l.starts_with(frontend));
        assert_eq!(per_frontend, more.is_some(), "{flags:?}: {}", reply.body);
        let warned = agent
            .stderr()
            .contains("no attached pod interface matches them");
        assert_eq!(warned, want > 0.0, "--pod-iface {glob}: {}", agent.stderr());
        agent
            .stop(Duration::from_secs(5))
            .expect("stopping lb-agent");
    }
}
