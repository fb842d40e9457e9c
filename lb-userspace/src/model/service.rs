//! A v1 Service, validated and reduced to what lb proxies. Manifests never pass the API server,
//! so its defaults (protocol TCP, policies Cluster, affinity timeout 10800 s) are applied here and
//! its validation is repeated for the fields lb uses.
//!
//! A field that fails validation costs the smallest unit kube-proxy would lose, never the whole
//! Service: a bad port skips that port, a bad address that address, and a setting with no smaller
//! unit falls back to what kube-proxy makes of the value. Each is reported as a warning. Only a
//! Service without a spec, or one lb has no datapath for (IPv6-only), is left out whole.
//!
//! A Service is read once per IP family ([`Family`]), as kube-proxy's per-family proxiers read
//! it: each sees that family's cluster IPs, externalIPs and LoadBalancer IPs only.
use std::{
    collections::{btree_map::Entry, BTreeMap},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::core::v1::{self as core, Service};

use super::{
    Family, ObjectRef, PortPolicy, Problem, Protocol, DEFAULT_AFFINITY_TIMEOUT,
    MAX_AFFINITY_TIMEOUT,
};

/// Longest Service port name: an RFC 1123 label (only container port names are 15-character
/// IANA service names).
pub const MAX_PORT_NAME: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    pub name: String,
    pub proto: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// An address and the field listing it, to name that field when the address is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed<A = Ipv4Addr> {
    pub ip: A,
    pub field: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec<A = Ipv4Addr> {
    pub name: ObjectRef,
    /// The cluster IPs of family `A` (a dual-stack Service's others are the other model's).
    pub cluster_ips: Vec<A>,
    /// spec.externalIPs of family `A`.
    pub external_ips: Vec<Listed<A>>,
    /// status.loadBalancer.ingress IPs of family `A`, except those with ipMode Proxy.
    pub load_balancer_ips: Vec<Listed<A>>,
    /// spec.loadBalancerSourceRanges of family `A`: (network, prefix length). Empty: the
    /// LoadBalancer IPs of this family are open to all (kube-proxy's per-family rule).
    pub source_ranges: Vec<(A, u8)>,
    pub ports: Vec<ServicePortSpec>,
    pub external_local: bool,
    pub internal_local: bool,
    pub affinity_timeout: Option<u32>,
    pub health_check_node_port: Option<u16>,
    /// What was left out of a service that is otherwise proxied.
    pub warnings: Vec<Problem>,
}

/// The problems found in one Service, each naming it.
struct Report<'a> {
    name: &'a ObjectRef,
    problems: Vec<Problem>,
}

impl Report<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            object: format!("Service {}", self.name),
            field: field.into(),
            message: message.into(),
        });
    }
}

impl<A: Family> ServiceSpec<A> {
    /// `Ok(None)`: a valid Service lb does not proxy in family `A` (headless, ExternalName, or
    /// of the other family only). `Err`: one lb leaves out whole, and why.
    pub fn parse(name: &ObjectRef, svc: &Service) -> Result<Option<Self>, Vec<Problem>> {
        let mut report = Report {
            name,
            problems: Vec::new(),
        };
        let Some(spec) = &svc.spec else {
            report.push("spec", "missing");
            return Err(report.problems);
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" || spec.cluster_ip.as_deref() == Some("None") {
            return Ok(None);
        }
        let Some(cluster_ips) = cluster_ips(spec, &mut report) else {
            return match report.problems.is_empty() {
                true => Ok(None),
                false => Err(report.problems),
            };
        };
        let external_local = external_policy_local(spec, kind, &mut report);
        let external_ips = indexed("spec.externalIPs", spec.external_ips.as_deref());
        let internal_policy = spec.internal_traffic_policy.as_deref();
        let mut out = Self {
            name: name.clone(),
            cluster_ips,
            external_ips: of_family(external_ips, &mut report),
            load_balancer_ips: load_balancer_ips(svc, &mut report),
            ports: ports(spec, &mut report),
            external_local,
            internal_local: policy_local(
                internal_policy,
                "spec.internalTrafficPolicy",
                &mut report,
            ),
            affinity_timeout: affinity_timeout(spec, &mut report),
            health_check_node_port: health_check_node_port(spec, kind, external_local, &mut report),
            source_ranges: Vec::new(),
            warnings: Vec::new(),
        };
        match source_ranges(spec, &mut report) {
            Some(ranges) => out.source_ranges = ranges,
            None if !out.load_balancer_ips.is_empty() => {
                // Serving the IPs without the ranges would open them to every client.
                let message = "no valid range: the LoadBalancer IPs are not served";
                report.push("spec.loadBalancerSourceRanges", message);
                out.load_balancer_ips.clear();
            }
            None => {}
        }
        out.warnings = report.problems;
        out.settle_external_policy();
        Ok(Some(out))
    }

    /// Drop the externalIPs and LoadBalancer IPs `refusal` gives a reason for, each reported:
    /// an address another Service or this node holds must not be taken over (CVE-2020-8554).
    pub fn refuse(&mut self, refusal: impl Fn(A) -> Option<String>) {
        let mut report = Report {
            name: &self.name,
            problems: std::mem::take(&mut self.warnings),
        };
        for list in [&mut self.external_ips, &mut self.load_balancer_ips] {
            list.retain(|listed| {
                let Some(why) = refusal(listed.ip) else {
                    return true;
                };
                let message = format!("{} is {why}: refused (CVE-2020-8554)", listed.ip);
                report.push(listed.field.clone(), message);
                false
            });
        }
        self.warnings = report.problems;
        self.settle_external_policy();
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

    /// eTP only means something for a service reachable from outside (kube-proxy's
    /// ExternalPolicyLocal); checked again whenever addresses are dropped.
    fn settle_external_policy(&mut self) {
        self.external_local &= self.externally_reachable();
    }

    fn externally_reachable(&self) -> bool {
        self.ports.iter().any(|p| p.node_port.is_some())
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// Every address of family `A` a Service holds as a ClusterIP, whether lb proxies it or not
/// (another proxy's Service still owns its address): no other Service's externalIP or
/// LoadBalancer IP may take it. Unparsable entries are reported by [`ServiceSpec::parse`].
pub fn cluster_ips_of<A: Family>(svc: &Service) -> Vec<A> {
    let fields = svc.spec.as_ref().map(cluster_ip_fields).unwrap_or_default();
    let of_a = |(_, ip): (String, &str)| A::of(ip.parse().ok()?);
    fields.into_iter().filter_map(of_a).collect()
}

/// The cluster IPs of family `A`, each checked against its family in spec.ipFamilies (paired by
/// index, as the API server allocates them). `None` for a Service not of family `A`: one whose
/// addresses, or whose spec.ipFamilies, are of the other family only (reported while lb has no
/// datapath for that family). A Service with neither (a manifest's) is single-stack IPv4, the
/// API server's default family.
fn cluster_ips<A: Family>(spec: &core::ServiceSpec, report: &mut Report) -> Option<Vec<A>> {
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let (mut ours, mut others) = (Vec::new(), 0);
    // Problems with the addresses are the family's that serves the Service to report.
    let mut local = Report {
        name: report.name,
        problems: Vec::new(),
    };
    for (i, (field, value)) in cluster_ip_fields(spec).into_iter().enumerate() {
        let Some(ip) = address(&field, value, &mut local) else {
            continue;
        };
        let family = family_name(ip);
        if let Some(listed) = families.get(i).filter(|f| *f != family) {
            let message =
                format!("{ip} is {family}, not {listed} as spec.ipFamilies[{i}] says: skipped");
            local.push(field, message);
            continue;
        }
        match A::of(ip) {
            Some(ip) => ours.push(ip),
            None => others += 1,
        }
    }
    let ours_declared = families.iter().any(|f| f == A::NAME);
    let is_ours = !ours.is_empty()
        || (others == 0 && ours_declared)
        || (others == 0 && families.is_empty() && A::NAME == Ipv4Addr::NAME);
    if !is_ours {
        if let Some(message) = A::OTHER_FAMILY_ONLY {
            report.push("spec.ipFamilies", message);
        }
        return None;
    }
    report.problems.append(&mut local.problems);
    Some(ours)
}

fn family_name(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::NAME,
        IpAddr::V6(_) => std::net::Ipv6Addr::NAME,
    }
}

/// spec.clusterIPs, or spec.clusterIP in an object written before dual-stack.
fn cluster_ip_fields(spec: &core::ServiceSpec) -> Vec<(String, &str)> {
    match &spec.cluster_ips {
        Some(ips) => indexed("spec.clusterIPs", Some(ips)),
        None => spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_string(), ip.as_str()))
            .collect(),
    }
}

fn indexed<'a>(field: &str, list: Option<&'a [String]>) -> Vec<(String, &'a str)> {
    let entries = list.unwrap_or_default().iter().enumerate();
    entries
        .map(|(i, ip)| (format!("{field}[{i}]"), ip.as_str()))
        .collect()
}

/// status.loadBalancer.ingress IPs, except those with ipMode Proxy (the load balancer proxies
/// them itself: kube-proxy leaves them alone).
fn load_balancer_ips<A: Family>(svc: &Service, report: &mut Report) -> Vec<Listed<A>> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref()?.ingress.as_deref());
    let vips = ingress.unwrap_or_default().iter().enumerate();
    let entries = vips
        .filter(|(_, ing)| ing.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|(i, ing)| {
            let ip = ing.ip.as_deref()?;
            Some((format!("status.loadBalancer.ingress[{i}].ip"), ip))
        });
    of_family(entries, report)
}

/// The addresses of family `A` among (field, value) entries; the other family's are the other
/// model's (kube-proxy's FilterIncorrectIPVersion). An empty value is skipped; one that is not an
/// address is reported and skipped.
fn of_family<'a, A: Family>(
    entries: impl IntoIterator<Item = (String, &'a str)>,
    report: &mut Report,
) -> Vec<Listed<A>> {
    let mut out = Vec::new();
    for (field, value) in entries {
        if let Some(ip) = address(&field, value, report).and_then(A::of) {
            out.push(Listed { ip, field });
        }
    }
    out
}

/// An address field's value; `None` for an empty one, or (reported) one that is no address.
fn address(field: &str, value: &str, report: &mut Report) -> Option<IpAddr> {
    match value.parse() {
        Ok(ip) => Some(ip),
        Err(_) if value.is_empty() => None,
        Err(_) => {
            report.push(field, format!("{value:?} is not an IP address: skipped"));
            None
        }
    }
}

/// spec.loadBalancerSourceRanges of family `A` (kube-proxy's per-family filter), each as its
/// network and prefix length; an entry that is no CIDR is reported and skipped. `None` when the
/// field lists entries and none of them is valid in either family: failing closed, since the
/// user asked for a firewall.
fn source_ranges<A: Family>(spec: &core::ServiceSpec, report: &mut Report) -> Option<Vec<(A, u8)>> {
    let listed = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut valid = false;
    for (i, value) in listed.iter().enumerate() {
        match value.trim().parse::<ipnet::IpNet>() {
            Ok(net) => {
                valid = true;
                if let Some(ip) = A::of(net.network()) {
                    out.push((ip, net.prefix_len()));
                }
            }
            Err(_) => report.push(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{value:?} is not a CIDR: skipped"),
            ),
        }
    }
    out.sort();
    out.dedup();
    (listed.is_empty() || valid).then_some(out)
}

/// kube-proxy's ExternalPolicyLocal: eTP Local, for a type it counts as external. kube-proxy
/// serves a Service's fields whatever its type, but an unknown type is not one of those
/// (ExternallyAccessible): it gets neither eTP Local nor a health check.
fn external_policy_local(spec: &core::ServiceSpec, kind: &str, report: &mut Report) -> bool {
    let policy = spec.external_traffic_policy.as_deref();
    let local = policy_local(policy, "spec.externalTrafficPolicy", report);
    if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&kind) {
        let message = format!(
            "unknown type {kind:?}: served as kube-proxy does, with externalTrafficPolicy \
             Cluster and no healthCheckNodePort"
        );
        report.push("spec.type", message);
        return false;
    }
    local
}

/// kube-proxy's NeedsHealthCheck: a LoadBalancer with eTP Local.
fn health_check_node_port(
    spec: &core::ServiceSpec,
    kind: &str,
    external_local: bool,
    report: &mut Report,
) -> Option<u16> {
    let port = spec.health_check_node_port.filter(|&n| n != 0);
    let port = port.filter(|_| kind == "LoadBalancer" && external_local)?;
    let checked = port_number(port);
    if let Err(message) = &checked {
        report.push("spec.healthCheckNodePort", message.clone());
    }
    checked.ok()
}

/// The Service's ports that pass validation, duplicates left out.
fn ports(spec: &core::ServiceSpec, report: &mut Report) -> Vec<ServicePortSpec> {
    let listed = spec.ports.iter().flatten().enumerate();
    let mut ports: Vec<(usize, ServicePortSpec)> = listed
        .filter_map(|(i, p)| Some((i, port(i, p, report)?)))
        .collect();
    // The API server refuses a Service with two such ports; of the ones a manifest gives, the
    // first stays. A name may repeat across protocols: kube-proxy tells ports apart by (name,
    // protocol), and so do EndpointSlice ports.
    let name = |p: &ServicePortSpec| Some((p.name.clone(), p.proto));
    first_of_each(&mut ports, ".name", "name and protocol", name, report);
    let number = |p: &ServicePortSpec| Some((p.port, p.proto));
    first_of_each(&mut ports, "", "port and protocol", number, report);
    let node_port = |p: &ServicePortSpec| Some((p.node_port?, p.proto));
    first_of_each(
        &mut ports,
        ".nodePort",
        "nodePort and protocol",
        node_port,
        report,
    );
    ports.into_iter().map(|(_, p)| p).collect()
}

/// One service port, or `None` to skip it: SCTP (not proxied, quietly), or a field that fails
/// validation (each one reported).
fn port(i: usize, p: &core::ServicePort, report: &mut Report) -> Option<ServicePortSpec> {
    let proto = protocol(p.protocol.as_deref().unwrap_or("TCP"));
    if matches!(proto, Ok(None)) {
        tracing::debug!("Service {}: SCTP port {} not proxied", report.name, p.port);
        return None;
    }
    let name = p.name.as_deref().unwrap_or_default();
    let label = dns_label(name);
    let number = port_number(p.port);
    let node_port = p.node_port.filter(|&n| n != 0).map(port_number).transpose();
    let failures = [
        ("protocol", proto.as_ref().err()),
        ("port", number.as_ref().err()),
        ("nodePort", node_port.as_ref().err()),
        ("name", label.as_ref().err()),
    ];
    for (field, message) in failures {
        if let Some(message) = message {
            report.push(
                format!("spec.ports[{i}].{field}"),
                format!("{message}: port skipped"),
            );
        }
    }
    label.ok()?;
    Some(ServicePortSpec {
        name: name.to_string(),
        proto: proto.ok()??,
        port: number.ok()?,
        node_port: node_port.ok()?,
    })
}

/// Keep the first of the ports with the same `key`, reporting the others at `spec.ports[i]` +
/// `suffix`.
fn first_of_each<K: Ord>(
    ports: &mut Vec<(usize, ServicePortSpec)>,
    suffix: &str,
    what: &str,
    key: impl Fn(&ServicePortSpec) -> Option<K>,
    report: &mut Report,
) {
    let mut first = BTreeMap::new();
    ports.retain(|(i, p)| {
        let Some(key) = key(p) else {
            return true;
        };
        match first.entry(key) {
            Entry::Vacant(e) => {
                e.insert(*i);
                true
            }
            Entry::Occupied(e) => {
                let message = format!("same {what} as spec.ports[{}]: port skipped", e.get());
                report.push(format!("spec.ports[{i}]{suffix}"), message);
                false
            }
        }
    });
}

/// `Ok(None)`: SCTP, valid but not proxied by lb.
fn protocol(value: &str) -> Result<Option<Protocol>, String> {
    match value {
        "TCP" => Ok(Some(Protocol::Tcp)),
        "UDP" => Ok(Some(Protocol::Udp)),
        "SCTP" => Ok(None),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

fn port_number(n: i32) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{n} is not within 1..=65535")),
    }
}

/// A Service port name is an RFC 1123 label (the API server's IsDNS1123Label); empty for the
/// one unnamed port.
fn dns_label(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.len() > MAX_PORT_NAME {
        Err(format!(
            "{name:?} is longer than {MAX_PORT_NAME} characters"
        ))
    } else if !name.chars().all(allowed) || name.starts_with('-') || name.ends_with('-') {
        Err(format!(
            "{name:?} is not a DNS label (lowercase letters, digits and '-', starting and ending \
             with a letter or digit)"
        ))
    } else {
        Ok(())
    }
}

/// Only "Local" is local: kube-proxy reads any other value as Cluster.
fn policy_local(value: Option<&str>, field: &str, report: &mut Report) -> bool {
    match value.unwrap_or("Cluster") {
        "Cluster" => false,
        "Local" => true,
        other => {
            report.push(field, format!("unknown policy {other:?}: Cluster"));
            false
        }
    }
}

/// ClientIP affinity's timeout; anything but ClientIP is no affinity, as in kube-proxy. A timeout
/// the API server would refuse (kube-proxy never sees one) leaves affinity off rather than
/// guess a value.
fn affinity_timeout(spec: &core::ServiceSpec, report: &mut Report) -> Option<u32> {
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => {
            let config = spec.session_affinity_config.as_ref();
            match config.and_then(|c| c.client_ip.as_ref()?.timeout_seconds) {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT as i32).contains(&t) => Some(t as u32),
                Some(t) => {
                    let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
                    let message = format!(
                        "{t} is not within 1..={MAX_AFFINITY_TIMEOUT}: no session affinity"
                    );
                    report.push(field, message);
                    None
                }
            }
        }
        other => {
            let message = format!("unknown session affinity {other:?}: none");
            report.push("spec.sessionAffinity", message);
            None
        }
    }
}
