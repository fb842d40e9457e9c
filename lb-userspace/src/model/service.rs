//! A v1 Service, validated and reduced to what lb proxies. Manifests never pass the API server,
//! so its defaults (protocol TCP, policies Cluster, affinity timeout 10800 s) are applied here and
//! its validation is repeated for the fields lb uses.
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;

use super::{
    ObjectRef, PortPolicy, Problem, Protocol, DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    pub name: String,
    pub proto: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: ObjectRef,
    /// IPv4 cluster IPs (dual-stack services also list an IPv6 one, not ours).
    pub cluster_ips: Vec<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr>,
    /// status.loadBalancer.ingress IPs, except those with ipMode Proxy.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePortSpec>,
    pub external_local: bool,
    pub internal_local: bool,
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: Option<u16>,
    /// What was left out of a service that is otherwise proxied.
    pub warnings: Vec<Problem>,
}

impl ServiceSpec {
    /// `Ok(None)`: a valid Service lb does not proxy (headless, ExternalName).
    pub fn parse(name: &ObjectRef, svc: &Service) -> Result<Option<ServiceSpec>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |field: String, message: String| {
            problems.push(Problem {
                object: format!("Service {name}"),
                field,
                message,
            })
        };
        let Some(spec) = &svc.spec else {
            problem("spec".into(), "missing".into());
            return Err(problems);
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" || spec.cluster_ip.as_deref() == Some("None") {
            return Ok(None);
        }
        if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&kind) {
            problem("spec.type".into(), format!("unknown type {kind:?}"));
        }
        let cluster_ips = match &spec.cluster_ips {
            Some(ips) => ipv4s(ips, "spec.clusterIPs", &mut problem),
            None => ipv4s(spec.cluster_ip.as_slice(), "spec.clusterIP", &mut problem),
        };
        let external_ips = ipv4s(
            spec.external_ips.as_deref().unwrap_or_default(),
            "spec.externalIPs",
            &mut problem,
        );
        let mut load_balancer_ips = Vec::new();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            let (Some(ip), false) = (&ing.ip, ing.ip_mode.as_deref() == Some("Proxy")) else {
                continue;
            };
            let field = format!("status.loadBalancer.ingress[{i}].ip");
            load_balancer_ips.extend(ipv4s(std::slice::from_ref(ip), &field, &mut problem));
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let field = |f: &str| format!("spec.ports[{i}].{f}");
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => {
                    tracing::debug!("Service {name}: SCTP port {} not proxied", p.port);
                    continue;
                }
                other => {
                    problem(field("protocol"), format!("unknown protocol {other:?}"));
                    continue;
                }
            };
            let port = port_number(p.port, &field("port"), &mut problem);
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => port_number(n, &field("nodePort"), &mut problem),
            };
            let name = p.name.clone().unwrap_or_default();
            // IANA_SVC_NAME: lb stores at most 15 bytes of it (LB_SERVICE_NAMES).
            if name.len() > 15 {
                problem(
                    field("name"),
                    format!("{name:?} is longer than 15 characters"),
                );
            }
            if let Some(port) = port {
                ports.push(ServicePortSpec {
                    name,
                    proto,
                    port,
                    node_port,
                });
            }
        }
        let external_local = policy_local(
            spec.external_traffic_policy.as_deref(),
            "spec.externalTrafficPolicy",
            &mut problem,
        );
        let internal_local = policy_local(
            spec.internal_traffic_policy.as_deref(),
            "spec.internalTrafficPolicy",
            &mut problem,
        );
        let affinity_timeout = match spec.session_affinity.as_deref().unwrap_or("None") {
            "None" => None,
            "ClientIP" => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref()?.timeout_seconds);
                match timeout {
                    None => Some(DEFAULT_AFFINITY_TIMEOUT),
                    Some(t) if (1..=MAX_AFFINITY_TIMEOUT as i32).contains(&t) => Some(t as u32),
                    Some(t) => {
                        let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
                        problem(field.into(), format!("{t} is not within 1..=86400"));
                        None
                    }
                }
            }
            other => {
                problem(
                    "spec.sessionAffinity".into(),
                    format!("unknown session affinity {other:?}"),
                );
                None
            }
        };
        let health_check_node_port = match spec.health_check_node_port {
            Some(n) if kind == "LoadBalancer" && external_local && n != 0 => {
                port_number(n, "spec.healthCheckNodePort", &mut problem)
            }
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut warnings = Vec::new();
        let ranges = spec
            .load_balancer_source_ranges
            .as_deref()
            .unwrap_or_default();
        if !ranges.is_empty() && !load_balancer_ips.is_empty() {
            // Serving the IPs without the ranges would open them to every client.
            warnings.push(Problem {
                object: format!("Service {name}"),
                field: "spec.loadBalancerSourceRanges".into(),
                message: "not supported yet: the LoadBalancer IPs are not served".into(),
            });
            load_balancer_ips.clear();
        }
        let mut spec = ServiceSpec {
            name: name.clone(),
            cluster_ips,
            external_ips,
            load_balancer_ips,
            ports,
            external_local,
            internal_local,
            affinity_timeout,
            health_check_node_port,
            warnings,
        };
        // eTP only means something for a service reachable from outside (kube-proxy's
        // ExternalPolicyLocal).
        spec.external_local &= spec.externally_reachable();
        Ok(Some(spec))
    }

    /// kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints. An externally reachable port uses
    /// the cluster endpoints whatever its policies: traffic from this node's pods to its external
    /// addresses short-circuits to them.
    pub fn port_policy(&self) -> PortPolicy {
        let external = self.externally_reachable();
        PortPolicy {
            uses_cluster: !self.internal_local || external,
            uses_local: self.internal_local || (self.external_local && external),
        }
    }

    fn externally_reachable(&self) -> bool {
        self.ports.iter().any(|p| p.node_port.is_some())
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

fn ipv4s(ips: &[String], field: &str, problem: &mut impl FnMut(String, String)) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        // A list field (clusterIPs, externalIPs) gets an index; a single one (clusterIP) not.
        let field = if ips.len() == 1 && !field.ends_with('s') {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        if ip.is_empty() {
            continue;
        }
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => out.push(v4),
            // IPv6 addresses belong to the v6 maps, which do not exist yet.
            Ok(std::net::IpAddr::V6(_)) => {}
            Err(_) => problem(field, format!("{ip:?} is not an IP address")),
        }
    }
    out
}

fn port_number(n: i32, field: &str, problem: &mut impl FnMut(String, String)) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            problem(field.into(), format!("{n} is not within 1..=65535"));
            None
        }
    }
}

fn policy_local(
    value: Option<&str>,
    field: &str,
    problem: &mut impl FnMut(String, String),
) -> bool {
    match value.unwrap_or("Cluster") {
        "Cluster" => false,
        "Local" => true,
        other => {
            problem(field.into(), format!("unknown policy {other:?}"));
            false
        }
    }
}
