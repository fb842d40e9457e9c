//! Pure translation of Kubernetes objects into what this node's maps should hold, with
//! kube-proxy's semantics. No I/O: every input is in [`Objects`] and [`NodeContext`], every output
//! in [`Desired`], so the whole of it is unit-testable.
//!
//! One Service port becomes up to two backend sets (cluster-wide and node-local endpoints) and a
//! frontend per address, port and scope pointing at one of them:
//! - ClusterIP frontends (both scopes) follow internalTrafficPolicy;
//! - NodePort, LoadBalancer and externalIP frontends follow externalTrafficPolicy for traffic from
//!   outside the node; from a pod on this node they use the cluster set, as kube-proxy's
//!   "short-circuit" rule does (the local set only when the service uses no cluster endpoints).
mod categorize;
pub(crate) mod endpoints;
mod family;
mod service;
mod tracker;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

pub use categorize::{categorize_endpoints, Categorized, PortPolicy};
pub use endpoints::{Endpoint, EndpointsByPort, PortKey};
pub use family::{Family, IPV6_SOCKETS_ONLY};
pub use service::{Listed, ServicePortSpec, ServiceSpec, MAX_PORT_NAME};
pub use tracker::{Changes, Tracker};

/// Label of objects handled by another proxy; kube-proxy and lb ignore them.
pub const LABEL_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label of headless services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// Default sessionAffinityConfig.clientIP.timeoutSeconds (3 hours), as the API server sets it.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// `namespace/name` of an object. The strings are shared: the tracker, [`Desired`] and the
/// reconciler hold several copies of every service's name (hundreds of thousands at 50,000
/// services), and a copy then costs no allocation. Equal copies compare by pointer first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the sources know, keyed by `namespace/name` (nodes by name). Objects sit behind
/// `Arc`s that sources keep while an object is unchanged, so [`Tracker`] finds what changed
/// between two snapshots by pointer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    pub services: BTreeMap<ObjectRef, Arc<Service>>,
    pub slices: BTreeMap<ObjectRef, Arc<EndpointSlice>>,
    pub nodes: BTreeMap<String, Arc<Node>>,
}

/// This node, as the agent sees it, in family `A`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeContext<A = Ipv4Addr> {
    pub name: String,
    /// Addresses that serve NodePorts (`--nodeport-addresses`, default the external interfaces').
    pub nodeport_addrs: Vec<A>,
}

impl<A> Default for NodeContext<A> {
    fn default() -> Self {
        NodeContext {
            name: String::new(),
            nodeport_addrs: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ClusterIp => "ClusterIP",
            Kind::NodePort => "NodePort",
            Kind::LoadBalancer => "LoadBalancer",
            Kind::ExternalIp => "ExternalIP",
        }
    }
}

/// Where a packet comes from: a pod on this node, or anywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    External,
    Internal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    Cluster,
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
}

/// One backend set: a service port's cluster-wide or node-local endpoints.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetKey {
    pub service: ObjectRef,
    pub port_name: String,
    pub proto: Protocol,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend<A = Ipv4Addr> {
    pub set: SetKey,
    pub kind: Kind,
    /// loadBalancerSourceRanges of a LoadBalancer frontend, (network, prefix length): new flows
    /// from other sources are dropped. None: no filtering (every other kind, or no ranges).
    pub source_ranges: Option<Arc<[(A, u8)]>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
    pub local: bool,
    pub terminating: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No endpoint anywhere: TCP RST / ICMP port unreachable.
    Reject,
    /// Endpoints exist, but not on this node under a Local policy.
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSet<A = Ipv4Addr> {
    /// Sorted, so equal sets compare equal and slot order is stable across syncs.
    pub backends: Vec<Backend<A>>,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    /// What an empty set answers.
    pub verdict: Verdict,
}

/// A healthCheckNodePort server kube-proxy would run (LoadBalancer with eTP=Local).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ObjectRef,
    pub local_endpoints: usize,
}

/// An object (or a part of it) that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `Service ns/name`, `EndpointSlice ns/name`, ...
    pub object: String,
    /// JSON path of the offending field, e.g. `spec.ports[1].port`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// What this node's maps of family `A` should hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired<A = Ipv4Addr> {
    pub frontends: BTreeMap<FrontendKey<A>, Frontend<A>>,
    pub sets: BTreeMap<SetKey, BackendSet<A>>,
    /// By healthCheckNodePort.
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// Every endpoint still listed in a slice of a proxied service, usable or not: their
    /// backends stay in the maps (without slots) so established connections to a terminating
    /// or not-ready pod keep going, as kube-proxy's conntrack entries do.
    pub retained: BTreeMap<(A, u16), Backend<A>>,
    /// Sorted.
    pub problems: Vec<Problem>,
}

impl<A> Default for Desired<A> {
    fn default() -> Self {
        Desired {
            frontends: BTreeMap::new(),
            sets: BTreeMap::new(),
            health_checks: BTreeMap::new(),
            retained: BTreeMap::new(),
            problems: Vec::new(),
        }
    }
}

impl<A> Desired<A> {
    /// The Kubernetes services with at least one frontend.
    pub fn services(&self) -> BTreeSet<&ObjectRef> {
        self.sets.keys().map(|k| &k.service).collect()
    }
}

/// Objects → desired maps of family `A` for this node, from scratch ([`Tracker`] keeps it up to
/// date).
pub fn desired<A: Family>(objects: &Objects, node: &NodeContext<A>) -> Desired<A> {
    let mut tracker = Tracker::default();
    tracker.update(&Objects::default(), objects, node);
    tracker.into_desired()
}

/// The zone label of this node's Node object ("" without one).
fn zone_of<A>(objects: &Objects, node: &NodeContext<A>) -> String {
    objects
        .nodes
        .get(&node.name)
        .and_then(|n| n.metadata.labels.as_ref()?.get(LABEL_ZONE).cloned())
        .unwrap_or_default()
}

/// Every set key of one service, for `BTreeMap::range` over [`Desired::sets`].
pub fn set_range(service: &ObjectRef) -> std::ops::RangeInclusive<SetKey> {
    let key = |port_name: String, proto, policy| SetKey {
        service: service.clone(),
        port_name,
        proto,
        policy,
    };
    // Port names are DNS labels, [a-z0-9-]: U+10FFFF sorts after all of them.
    key(String::new(), Protocol::Tcp, Policy::Cluster)
        ..=key("\u{10FFFF}".into(), Protocol::Udp, Policy::Local)
}

/// One service's part of [`Desired`], before it is merged with the other services'.
struct Share<A> {
    sets: Vec<(SetKey, BackendSet<A>)>,
    /// The first frontend of the service with a key keeps it: its ClusterIP before its other
    /// addresses, as kube-proxy's ClusterIP rule comes before its externalIP and LB rules.
    frontends: BTreeMap<FrontendKey<A>, Frontend<A>>,
    retained: BTreeMap<(A, u16), Backend<A>>,
    health_check: Option<(u16, HealthCheck)>,
    /// Every externalIP and LoadBalancer IP the Service lists, refused or not: whether it is
    /// refused changes with other services' ClusterIPs.
    requested: Vec<A>,
    problems: Vec<Problem>,
}

impl<A> Default for Share<A> {
    fn default() -> Self {
        Share {
            sets: Vec::new(),
            frontends: BTreeMap::new(),
            retained: BTreeMap::new(),
            health_check: None,
            requested: Vec::new(),
            problems: Vec::new(),
        }
    }
}

/// A Service and its merged endpoints → its share (empty when lb does not proxy it). `refusal`
/// says why an externalIP or LoadBalancer IP may not be served ([`ServiceSpec::refuse`]).
fn share_of<A: Family>(
    name: &ObjectRef,
    svc: &Service,
    eps: Option<&EndpointsByPort<A>>,
    node: &NodeContext<A>,
    zone: &str,
    refusal: impl Fn(A) -> Option<String>,
) -> Share<A> {
    let mut out = Share::default();
    if ignored(&svc.metadata.labels) {
        return out;
    }
    match ServiceSpec::<A>::parse(name, svc) {
        Ok(Some(mut spec)) => {
            let listed = spec.external_ips.iter().chain(&spec.load_balancer_ips);
            out.requested = listed.map(|l| l.ip).collect();
            spec.refuse(refusal);
            out.problems = std::mem::take(&mut spec.warnings);
            add_service(&mut out, &spec, eps, node, zone);
        }
        Ok(None) => {}
        Err(problems) => out.problems = problems,
    }
    out
}

/// Objects carrying the service-proxy-name or headless label are not ours.
pub fn ignored(labels: &Option<BTreeMap<String, String>>) -> bool {
    labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
}

fn add_service<A: Family>(
    out: &mut Share<A>,
    spec: &ServiceSpec<A>,
    eps: Option<&EndpointsByPort<A>>,
    node: &NodeContext<A>,
    zone: &str,
) {
    for port in &spec.ports {
        let key = PortKey {
            name: port.name.clone(),
            proto: port.proto,
        };
        let list = eps.and_then(|e| e.get(&key)).map(Vec::as_slice);
        for e in list.unwrap_or_default() {
            out.retained.insert((e.ip, e.port), backend_of(e));
        }
        let policy = spec.port_policy();
        let cat = categorize_endpoints(list.unwrap_or_default(), &policy, &node.name, zone);
        let set_key = |policy| SetKey {
            service: spec.name.clone(),
            port_name: port.name.clone(),
            proto: port.proto,
            policy,
        };
        let make_set = |eps: &[Endpoint<A>], local: bool| BackendSet {
            backends: backends(eps),
            affinity_timeout: spec.affinity_timeout,
            external_local: local && spec.external_local,
            internal_local: local && spec.internal_local,
            verdict: if cat.has_any_endpoints {
                Verdict::Drop
            } else {
                Verdict::Reject
            },
        };
        if policy.uses_cluster {
            let eps = cat.cluster.as_deref().unwrap_or_default();
            out.sets
                .push((set_key(Policy::Cluster), make_set(eps, false)));
        }
        if policy.uses_local {
            let eps = cat.local.as_deref().unwrap_or_default();
            out.sets.push((set_key(Policy::Local), make_set(eps, true)));
        }
        // From a pod, external addresses short-circuit to the cluster set when there is one.
        let pod_to_external = policy_of(!policy.uses_cluster);
        let ranges: Option<Arc<[(A, u8)]>> =
            (!spec.source_ranges.is_empty()).then(|| spec.source_ranges.as_slice().into());
        let mut add = |ip: A, port_num: u16, kind: Kind, external: Policy| {
            for (scope, policy) in [
                (Scope::External, external),
                (Scope::Internal, pod_to_external),
            ] {
                let policy = if kind == Kind::ClusterIp {
                    policy_of(spec.internal_local)
                } else {
                    policy
                };
                let key = FrontendKey {
                    ip,
                    port: port_num,
                    proto: port.proto,
                    scope,
                };
                let fe = Frontend {
                    set: set_key(policy),
                    kind,
                    // Only a LoadBalancer IP is filtered: kube-proxy's firewall chains leave
                    // NodePorts, ClusterIPs and externalIPs open.
                    source_ranges: ranges.clone().filter(|_| kind == Kind::LoadBalancer),
                };
                // Another service's claim on the key is settled by the tracker.
                out.frontends.entry(key).or_insert(fe);
            }
        };
        let external = policy_of(spec.external_local);
        for ip in &spec.cluster_ips {
            add(*ip, port.port, Kind::ClusterIp, external);
        }
        if let Some(node_port) = port.node_port {
            for ip in &node.nodeport_addrs {
                add(*ip, node_port, Kind::NodePort, external);
            }
        }
        for listed in &spec.external_ips {
            add(listed.ip, port.port, Kind::ExternalIp, external);
        }
        for listed in &spec.load_balancer_ips {
            add(listed.ip, port.port, Kind::LoadBalancer, external);
        }
    }
    if let Some(port) = spec.health_check_node_port {
        // kube-proxy's LocalReadyEndpoints: distinct IPs, over all the service's ports.
        let local_ready: BTreeSet<A> = eps
            .into_iter()
            .flat_map(|ports| ports.values().flatten())
            .filter(|e| e.local && e.ready)
            .map(|e| e.ip)
            .collect();
        let check = HealthCheck {
            service: spec.name.clone(),
            local_endpoints: local_ready.len(),
        };
        out.health_check = Some((port, check));
    }
}

fn policy_of(local: bool) -> Policy {
    if local {
        Policy::Local
    } else {
        Policy::Cluster
    }
}

fn backend_of<A: Copy>(e: &Endpoint<A>) -> Backend<A> {
    Backend {
        ip: e.ip,
        port: e.port,
        local: e.local,
        terminating: e.terminating,
    }
}

fn backends<A: Copy + Ord>(eps: &[Endpoint<A>]) -> Vec<Backend<A>> {
    let mut out: Vec<Backend<A>> = eps.iter().map(backend_of).collect();
    out.sort();
    out
}

#[cfg(test)]
pub(crate) mod golden;
#[cfg(test)]
mod tests;
