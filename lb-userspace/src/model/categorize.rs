//! Which endpoints a service port uses on this node: kube-proxy's CategorizeEndpoints
//! (pkg/proxy/topology.go), with its topology hints (same node, then same zone) and its fallback
//! to serving-terminating endpoints when nothing is ready.
use std::net::Ipv4Addr;

use super::Endpoint;

/// The traffic policies of one service port, as kube-proxy's ServicePort reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// Some traffic uses Cluster policy: iTP=Cluster, or externally reachable with eTP=Cluster.
    pub uses_cluster: bool,
    /// Some traffic uses Local policy: iTP=Local, or externally reachable with eTP=Local.
    pub uses_local: bool,
}

/// The result of [`categorize_endpoints`]. `None` plays the part of Go's nil slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Categorized<A = Ipv4Addr> {
    /// Usable Cluster-policy endpoints; `None` when the port never uses Cluster policy.
    pub cluster: Option<Vec<Endpoint<A>>>,
    /// Usable Local-policy endpoints; `None` when the port never uses Local policy (or has none).
    pub local: Option<Vec<Endpoint<A>>>,
    /// Union of the two: every endpoint this node may send to.
    pub all_reachable: Option<Vec<Endpoint<A>>>,
    /// Whether the service has usable endpoints anywhere in the cluster.
    pub has_any_endpoints: bool,
}

impl<A> Default for Categorized<A> {
    fn default() -> Self {
        Categorized {
            cluster: None,
            local: None,
            all_reachable: None,
            has_any_endpoints: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    None,
    SameNode,
    SameZone,
}

pub fn categorize_endpoints<A: Copy + Ord>(
    endpoints: &[Endpoint<A>],
    policy: &PortPolicy,
    node_name: &str,
    zone: &str,
) -> Categorized<A> {
    let mut out = Categorized::default();
    if endpoints.is_empty() {
        return out;
    }
    let mut topology = Topology::None;
    if policy.uses_cluster {
        topology = topology_from_hints(endpoints, node_name, zone);
        let mut cluster = filter(endpoints, |e| {
            e.ready && available_for_topology(e, topology, node_name, zone)
        });
        // No ready endpoint anywhere (topology was already dropped if none matched it): fall
        // back to the serving-terminating ones.
        if cluster.is_empty() {
            cluster = filter(endpoints, |e| e.serving && e.terminating);
        }
        out.has_any_endpoints = !cluster.is_empty();
        out.cluster = Some(cluster);
    }
    if !policy.uses_local {
        out.all_reachable = out.cluster.clone();
        return out;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for e in endpoints {
        if e.ready {
            out.has_any_endpoints = true;
            local_ready |= e.local;
        } else if e.serving && e.terminating {
            out.has_any_endpoints = true;
            local_terminating |= e.local;
        }
    }
    let mut use_terminating = false;
    if local_ready {
        out.local = Some(filter(endpoints, |e| e.local && e.ready));
    } else if local_terminating {
        use_terminating = true;
        out.local = Some(filter(endpoints, |e| e.local && e.serving && e.terminating));
    }
    if !policy.uses_cluster {
        out.all_reachable = out.local.clone();
        return out;
    }
    if topology == Topology::None && !use_terminating {
        // Every ready endpoint is in the cluster list, the local ones too.
        out.all_reachable = out.cluster.clone();
        return out;
    }
    let mut all: Vec<Endpoint<A>> = out
        .cluster
        .iter()
        .chain(&out.local)
        .flatten()
        .cloned()
        .collect();
    all.sort_by_key(|e| (e.ip, e.port));
    all.dedup_by_key(|e| (e.ip, e.port));
    out.all_reachable = Some(all);
    out
}

/// Same-node hints win when every ready endpoint has one and one names this node; then
/// same-zone hints likewise; otherwise no topology.
fn topology_from_hints<A>(endpoints: &[Endpoint<A>], node_name: &str, zone: &str) -> Topology {
    let ready: Vec<&Endpoint<A>> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::None;
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints.is_empty());
    if all_node_hints && ready.iter().any(|e| e.node_hints.contains(node_name)) {
        return Topology::SameNode;
    }
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints.is_empty());
    if all_zone_hints && ready.iter().any(|e| e.zone_hints.contains(zone)) {
        return Topology::SameZone;
    }
    Topology::None
}

fn available_for_topology<A>(
    e: &Endpoint<A>,
    topology: Topology,
    node_name: &str,
    zone: &str,
) -> bool {
    match topology {
        Topology::None => true,
        Topology::SameNode => e.node_hints.contains(node_name),
        Topology::SameZone => e.zone_hints.contains(zone),
    }
}

fn filter<A: Clone>(
    endpoints: &[Endpoint<A>],
    keep: impl Fn(&Endpoint<A>) -> bool,
) -> Vec<Endpoint<A>> {
    endpoints.iter().filter(|e| keep(e)).cloned().collect()
}
