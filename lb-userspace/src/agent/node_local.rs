//! Which links carry lb's programs and which addresses serve NodePorts: given by flags, or,
//! where the flags leave it open, found on the node itself (its Node object and its links) so
//! that one DaemonSet spec fits every node. Pure: the agent feeds it scans and Node objects.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Context as _, Result};
use glob::Pattern;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::{
    interfaces::{DefaultRoutes, Link, LinkKind},
    RunArgs,
};
use crate::model::Family;

/// Host-side pod interfaces of the common CNIs when `--pod-iface` is absent: veth pairs
/// (flannel, bridge, kindnet, ptp), Calico's `cali*`, Cilium's `lxc*`. Ports of Linux bridges
/// are pod interfaces too (bridge CNIs may name their veths anything).
pub const DEFAULT_POD_GLOBS: [&str; 3] = ["veth*", "cali*", "lxc*"];

/// What lb attaches to a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// XDP: north-south traffic (NodePort, LoadBalancer, externalIP).
    External,
    /// TC: traffic from pods (ClusterIP and the rest from inside).
    Pod,
    /// TC: a tunnel of the pod overlay (vxlan, geneve). Flows lb SNATs towards a pod behind it
    /// take its address (as MASQUERADE takes the route's source), so their replies come back
    /// through it, where lb reverse-translates them; the network between the nodes may drop
    /// pod-sourced packets (the reason overlays exist).
    Tunnel,
}

/// The flags that decide placement, parsed once.
pub struct Placement {
    ext: BTreeSet<String>,
    pod: Vec<Pattern>,
    /// Only by default: an explicit `--pod-iface` list is taken as complete.
    bridge_ports: bool,
    /// Both families: each family's NodePorts use its own CIDRs, or the default without any.
    nodeport_cidrs: Vec<IpNet>,
}

/// The external interfaces chosen now, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct External {
    pub names: BTreeSet<String>,
    pub how: String,
}

impl Placement {
    pub fn new(args: &RunArgs) -> Result<Self> {
        let default_globs = DEFAULT_POD_GLOBS.map(String::from);
        let globs = match args.pod_ifaces.is_empty() {
            true => &default_globs[..],
            false => &args.pod_ifaces[..],
        };
        let pod = globs
            .iter()
            .map(|g| Pattern::new(g).with_context(|| format!("--pod-iface {g:?}")))
            .collect::<Result<_>>()?;
        let nodeport_cidrs = args.nodeport_cidrs.clone();
        Ok(Placement {
            ext: args.ext_ifaces.iter().cloned().collect(),
            pod,
            bridge_ports: args.pod_ifaces.is_empty(),
            nodeport_cidrs,
        })
    }

    /// For the start-up log: the pod interface patterns and where they came from.
    pub fn pod_description(&self) -> String {
        let globs: Vec<&str> = self.pod.iter().map(Pattern::as_str).collect();
        match self.bridge_ports {
            true => format!("{} and Linux bridge ports (default)", globs.join(", ")),
            false => format!("{} (--pod-iface)", globs.join(", ")),
        }
    }

    /// `--ext-iface` if given; else the link holding the Node's InternalIP (then ExternalIP);
    /// else the link of the IPv4 default route, else of the IPv6 one; else none.
    pub fn external(
        &self,
        node: Option<&Node>,
        links: &BTreeMap<u32, Link>,
        routes: DefaultRoutes,
    ) -> External {
        if !self.ext.is_empty() {
            return External {
                names: self.ext.clone(),
                how: "--ext-iface".into(),
            };
        }
        let held = node_addresses(node).into_iter().find_map(|(kind, ip)| {
            let link = links.values().find(|l| l.ips().any(|a| a == ip))?;
            Some((link, format!("holds the Node's {kind} {ip}")))
        });
        // IPv4's first: on a dual-stack node both routes usually leave by the same link. An
        // IPv6-only node has only the IPv6 one.
        let routed = || match (routes.v4, routes.v6) {
            (Some(v4), _) => Some((links.get(&v4)?, "carries the IPv4 default route".into())),
            (None, Some(v6)) => Some((links.get(&v6)?, "carries the IPv6 default route".into())),
            (None, None) => None,
        };
        match held.or_else(routed) {
            Some((link, how)) => External {
                names: BTreeSet::from([link.name.clone()]),
                how,
            },
            None => External {
                names: BTreeSet::new(),
                how: "none found (no Node address on this host, no default route): \
                      NodePort, LoadBalancer and externalIP traffic is not handled"
                    .into(),
            },
        }
    }

    /// What `link` gets, given the external interfaces chosen: external wins over tunnel, tunnel
    /// over pod.
    pub fn role(&self, link: &Link, links: &BTreeMap<u32, Link>, ext: &External) -> Option<Role> {
        // Nothing of lb's parses a packet without Ethernet header (`LinkKind::L3Tunnel`).
        if link.kind == LinkKind::L3Tunnel {
            return None;
        }
        if ext.names.contains(&link.name) {
            return Some(Role::External);
        }
        if link.kind == LinkKind::Tunnel {
            return Some(Role::Tunnel);
        }
        if self.pod.iter().any(|p| p.matches(&link.name)) {
            return Some(Role::Pod);
        }
        // A port of a bridge that is itself external (br0 holding the node IP, with eth0 as its
        // port) faces the outside, not a pod.
        let bridge = links
            .get(&link.controller?)
            .filter(|c| c.kind == LinkKind::Bridge)?;
        (self.bridge_ports && !ext.names.contains(&bridge.name)).then_some(Role::Pod)
    }

    /// `--nodeport-addresses` picks among all the host's addresses of family `A`; by default
    /// (and when the flag names no CIDR of that family, as kube-proxy does per family) NodePorts
    /// are served on the external interfaces' addresses and on the Node's addresses this host
    /// holds.
    pub fn nodeport_addrs<A: Family>(
        &self,
        node: Option<&Node>,
        links: &BTreeMap<u32, Link>,
        ext: &External,
    ) -> Vec<A> {
        let local = links.values().flat_map(Link::ips);
        let cidrs: Vec<&IpNet> = self
            .nodeport_cidrs
            .iter()
            .filter(|c| A::of(c.addr()).is_some())
            .collect();
        let mut out: Vec<A> = if cidrs.is_empty() {
            let node_ips: Vec<IpAddr> = node_addresses(node).into_iter().map(|a| a.1).collect();
            let ext_addrs = links
                .values()
                .filter(|l| ext.names.contains(&l.name))
                .flat_map(Link::ips);
            local
                .filter(|a| node_ips.contains(a))
                .chain(ext_addrs)
                .filter_map(A::of)
                .collect()
        } else {
            local
                .filter(|a| cidrs.iter().any(|c| c.contains(a)))
                .filter_map(A::of)
                .collect()
        };
        out.sort();
        out.dedup();
        out
    }
}

/// The Node's InternalIPs, then its ExternalIPs (both families), in status order.
fn node_addresses(node: Option<&Node>) -> Vec<(&'static str, IpAddr)> {
    let addrs = node
        .and_then(|n| n.status.as_ref()?.addresses.as_deref())
        .unwrap_or_default();
    ["InternalIP", "ExternalIP"]
        .into_iter()
        .flat_map(|kind| {
            addrs
                .iter()
                .filter(move |a| a.type_ == kind)
                .filter_map(move |a| Some((kind, a.address.parse().ok()?)))
        })
        .collect()
}

#[cfg(test)]
mod tests;
