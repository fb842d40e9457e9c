//! The services a benchmark node holds: N services of 5 endpoints, one of which (the measured
//! one) leads to the lab's pods; the same set as kube-proxy rules and as lb-agent manifests.
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::kube_proxy::ServicePort;

/// The namespace of every benchmark service.
pub const NAMESPACE: &str = "bench";
/// The service port; endpoints listen on [`TARGET_PORT`].
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Endpoints of the services nobody calls: addresses of pods elsewhere in the cluster.
const FIRST_OTHER_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 245, 0, 1);
pub const ENDPOINTS: usize = 5;
/// One service in this many also has a NodePort: the NodePort range (30000-32767) holds 2,768,
/// so not all of 10,000 services can have one.
const NODE_PORT_EVERY: usize = 4;
const FIRST_NODE_PORT: u16 = 30000;
/// Services per manifest file: a cluster's manifests come split by team or application.
pub const SERVICES_PER_FILE: usize = 250;

/// `n` services; the measured one sits in the middle, where it is on average in kube-proxy's
/// rule order (which follows Go's map iteration, i.e. is random), and has a NodePort.
pub struct ServiceSet {
    pub services: Vec<ServicePort>,
    pub measured: usize,
}

impl ServiceSet {
    /// `pods`: the measured service's endpoints (the lab's pod addresses).
    pub fn new(n: usize, pods: &[Ipv4Addr]) -> ServiceSet {
        let measured = (n / 2) / NODE_PORT_EVERY * NODE_PORT_EVERY;
        let services = (0..n)
            .map(|i| {
                let endpoints = if i == measured {
                    pods.to_vec()
                } else {
                    (0..ENDPOINTS)
                        .map(|k| offset(FIRST_OTHER_ENDPOINT, i * ENDPOINTS + k))
                        .collect()
                };
                service(i, endpoints)
            })
            .collect();
        ServiceSet { services, measured }
    }

    pub fn measured(&self) -> &ServicePort {
        &self.services[self.measured]
    }

    /// Service and EndpointSlice objects for lb-agent's `--manifests`: (file name, multi-document
    /// YAML) with [`SERVICES_PER_FILE`] services each. The measured service's endpoints are on
    /// `node`, the others' on other nodes.
    pub fn manifests(&self, node: &str) -> Vec<(String, String)> {
        let files = self.services.chunks(SERVICES_PER_FILE).enumerate();
        files
            .map(|(f, chunk)| {
                let mut text = String::new();
                for (j, svc) in chunk.iter().enumerate() {
                    let on = if f * SERVICES_PER_FILE + j == self.measured {
                        node
                    } else {
                        "elsewhere"
                    };
                    write_service(&mut text, svc, on);
                }
                (format!("services-{f:03}.yaml"), text)
            })
            .collect()
    }
}

fn offset(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n as u32)
}

fn service(i: usize, endpoints: Vec<Ipv4Addr>) -> ServicePort {
    ServicePort {
        namespace: NAMESPACE.into(),
        name: format!("svc-{i:05}"),
        port_name: "http".into(),
        cluster_ip: offset(FIRST_CLUSTER_IP, i),
        port: PORT,
        node_port: i
            .is_multiple_of(NODE_PORT_EVERY)
            .then(|| FIRST_NODE_PORT + (i / NODE_PORT_EVERY) as u16),
        endpoints: endpoints
            .into_iter()
            .map(|ip| SocketAddrV4::new(ip, TARGET_PORT))
            .collect(),
    }
}

fn write_service(out: &mut String, svc: &ServicePort, node: &str) {
    let (kind, node_port) = match svc.node_port {
        Some(np) => ("NodePort", format!(", nodePort: {np}")),
        None => ("ClusterIP", String::new()),
    };
    let _ = write!(
        out,
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  type: {kind}
  clusterIP: {ip}
  ports:
  - {{name: {port_name}, port: {port}, targetPort: {TARGET_PORT}{node_port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
- {{name: {port_name}, port: {TARGET_PORT}}}
endpoints:
",
        name = svc.name,
        ns = svc.namespace,
        ip = svc.cluster_ip,
        port_name = svc.port_name,
        port = svc.port,
    );
    for ep in &svc.endpoints {
        let _ = writeln!(out, "- {{addresses: [{}], nodeName: {node}}}", ep.ip());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Ipv4Addr> {
        (11..16).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect()
    }

    #[test]
    fn the_measured_service_is_in_the_middle_with_the_pods_and_a_node_port() {
        for (n, want) in [(1, 0), (1000, 500), (10_000, 5000)] {
            let set = ServiceSet::new(n, &pods());
            assert_eq!(set.services.len(), n);
            assert_eq!(set.measured, want);
            let m = set.measured();
            assert!(m.node_port.is_some(), "n={n}");
            assert_eq!(m.endpoints[0], "10.244.1.11:8080".parse().unwrap());
        }
    }

    #[test]
    fn addresses_and_node_ports_are_distinct() {
        let set = ServiceSet::new(10_000, &pods());
        let mut ips: Vec<_> = set.services.iter().map(|s| s.cluster_ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 10_000);
        let mut nps: Vec<_> = set.services.iter().filter_map(|s| s.node_port).collect();
        assert_eq!(nps.len(), 2500);
        assert!(nps.iter().all(|p| (30000..=32767).contains(p)));
        nps.sort();
        nps.dedup();
        assert_eq!(nps.len(), 2500);
        let mut eps: Vec<_> = set.services.iter().flat_map(|s| &s.endpoints).collect();
        eps.sort();
        eps.dedup();
        assert_eq!(eps.len(), 50_000);
    }

    #[test]
    fn manifests_hold_every_service_and_slice() {
        let set = ServiceSet::new(8, &pods());
        let files = set.manifests("node-a");
        assert_eq!(files.len(), 1);
        let text = &files[0].1;
        assert_eq!(text.matches("kind: Service\n").count(), 8);
        assert_eq!(text.matches("kind: EndpointSlice\n").count(), 8);
        assert_eq!(text.matches("nodeName: node-a").count(), 5);
        assert!(text.contains("clusterIP: 10.96.0.14\n"));
        assert!(text.contains("nodePort: 30001}"));
    }

    #[test]
    fn manifests_stay_under_the_parsers_document_budget() {
        let files = ServiceSet::new(10_000, &pods()).manifests("node-a");
        assert_eq!(files.len(), 40);
        assert!(files
            .iter()
            .all(|(_, t)| t.matches("---\n").count() <= 1024));
        let local: usize = files
            .iter()
            .map(|(_, t)| t.matches("nodeName: node-a").count())
            .sum();
        assert_eq!(
            local, 5,
            "the measured service's endpoints, wherever its file is"
        );
    }
}
