//! Which interfaces carry lb's programs (see [`node_local`](super::node_local) for how they are
//! chosen), kept in step with the links that exist. A link that vanishes is let go (the kernel
//! already dropped its attachment; its pin is removed); one that appears is attached; one whose
//! role changes (it became or stopped being the external interface) is re-attached.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use lb_common::{IfaceInfo, IFACE_EXTERNAL, IFACE_TUNNEL};

use super::{
    interfaces::{Host, Link, LinkKind},
    node_local::{External, Placement, Role},
    RunArgs,
};
use crate::{
    dataplane::{Dataplane, XdpRequest},
    metrics::Metrics,
    model::Backend,
};

/// The role an interface record says a link was attached in.
fn role_of(record: &IfaceInfo) -> Role {
    match record.role {
        IFACE_EXTERNAL => Role::External,
        IFACE_TUNNEL => Role::Tunnel,
        _ => Role::Pod,
    }
}

pub struct Attachments {
    placement: Placement,
    xdp: XdpRequest,
    /// `lb_interface_xdp_mode` is kept here, where attachments change.
    metrics: Metrics,
    /// The external interfaces chosen at the last sync (None before the first).
    ext: Option<External>,
    /// ifindex → name and role of what is attached now.
    attached: BTreeMap<u32, (String, Role)>,
    /// ifindexes whose attach failed: not retried on every link event (errors would pile up),
    /// only after [`Attachments::forget_failures`] (the periodic resync) or once the link is gone.
    failed: BTreeSet<u32>,
    /// L3 tunnels (ipip, WireGuard) already warned about, by ifindex.
    l3_tunnels: BTreeSet<u32>,
    /// Local pod endpoints last found without any pod interface attached (warned once per
    /// change).
    unserved: usize,
}

impl Attachments {
    pub fn new(args: &RunArgs, metrics: Metrics) -> Result<Self> {
        let placement = Placement::new(args)?;
        tracing::info!(interfaces = %placement.pod_description(), "pod interfaces");
        Ok(Attachments {
            placement,
            xdp: args.xdp_mode.into(),
            metrics,
            ext: None,
            attached: BTreeMap::new(),
            failed: BTreeSet::new(),
            l3_tunnels: BTreeSet::new(),
            unserved: 0,
        })
    }

    /// Warn (once per change) and count when this node has pod endpoints but lb is attached to
    /// no pod interface: another CNI's naming (AWS VPC CNI's `eni*`, GKE's `gke*`) that the
    /// `--pod-iface` globs miss, so those pods reach no Service. `endpoints`: the desired state's
    /// endpoints; `host`: what tells the node's own addresses (hostNetwork endpoints need no pod
    /// interface). Costs nothing while a pod interface is attached.
    pub fn check_pod_interfaces<'a>(
        &mut self,
        endpoints: impl IntoIterator<Item = &'a Backend>,
        host: &Host,
    ) {
        let any_pod = self.attached.values().any(|(_, role)| *role == Role::Pod);
        let unserved = match any_pod {
            true => 0,
            false => {
                let node_addrs: BTreeSet<&Ipv4Addr> =
                    host.links.values().flat_map(|l| &l.addrs).collect();
                let pods = endpoints.into_iter().filter(|b| b.local);
                pods.filter(|b| !node_addrs.contains(&b.ip)).count()
            }
        };
        if unserved != self.unserved && unserved > 0 {
            tracing::warn!(
                endpoints = unserved,
                pod_interfaces = %self.placement.pod_description(),
                "this node has pod endpoints but no attached pod interface matches them: pods \
                 here reach no Service through lb. Name their host-side interfaces with \
                 --pod-iface (AWS VPC CNI: eni*, GKE: gke*)"
            );
        }
        self.unserved = unserved;
        self.metrics.set_unserved_local_endpoints(unserved);
    }

    /// Choose the external interfaces for this `node` object and `host`, attach to wanted links
    /// not yet attached (in their role), let go of those gone; returns the addresses that serve
    /// NodePorts, per family. `first` also detaches what a previous agent attached to links no longer wanted.
    pub fn sync(
        &mut self,
        dp: &mut Dataplane,
        host: &Host,
        node: Option<&Node>,
        first: bool,
    ) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
        let ext = self.choose_external(host, node);
        dp.set_external(&ext.names);
        let links = &host.links;
        let wanted: BTreeMap<u32, (String, Role)> = links
            .values()
            .filter_map(|l| {
                Some((
                    l.index,
                    (l.name.clone(), self.placement.role(l, links, &ext)?),
                ))
            })
            .collect();
        // What is attached now, and as what: on the first sync what a previous agent recorded
        // (LB_IFACES), so that a link whose role changed across the restart loses its old hooks.
        let before: Vec<(u32, Option<(String, Role)>)> = if first {
            let recorded = |i: u32| {
                dp.maps
                    .iface(i)
                    .map(|r| (r.name().to_string(), role_of(&r)))
            };
            dp.attached()
                .into_iter()
                .map(|i| (i, recorded(i)))
                .collect()
        } else {
            self.attached
                .iter()
                .map(|(&i, a)| (i, Some(a.clone())))
                .collect()
        };
        for (ifindex, before) in before {
            let now = wanted.get(&ifindex);
            if now.is_none() || before.is_some_and(|b| Some(&b) != now) {
                self.let_go(dp, ifindex);
            }
        }
        self.failed.retain(|i| links.contains_key(i));
        self.warn_l3_tunnels(links);
        for (&ifindex, (_, role)) in &wanted {
            let link = &links[&ifindex];
            if self.attached.contains_key(&ifindex) || self.failed.contains(&ifindex) {
                continue;
            }
            match self.attach(dp, link, *role) {
                Ok(()) => {
                    self.attached.insert(ifindex, (link.name.clone(), *role));
                }
                Err(e) => {
                    tracing::error!(iface = %link.name, "attach failed: {e:#}");
                    self.failed.insert(ifindex);
                }
            }
        }
        let snat_sources = wanted
            .iter()
            .filter(|(_, (_, role))| matches!(role, Role::External | Role::Tunnel));
        for (ifindex, _) in snat_sources {
            self.set_snat_addr(dp, &links[ifindex]);
        }
        let v4 = self.placement.nodeport_addrs(node, links, &ext);
        let v6 = self.placement.nodeport_addrs(node, links, &ext);
        self.ext = Some(ext);
        (v4, v6)
    }

    /// Once per link: lb attaches nothing to a tunnel without Ethernet header, and says what
    /// that costs.
    fn warn_l3_tunnels(&mut self, links: &BTreeMap<u32, Link>) {
        self.l3_tunnels.retain(|i| links.contains_key(i));
        for link in links.values().filter(|l| l.kind == LinkKind::L3Tunnel) {
            if self.l3_tunnels.insert(link.index) {
                tracing::warn!(
                    iface = %link.name,
                    "not attached: lb's programs need Ethernet frames and this tunnel (ipip, sit, \
                     WireGuard) carries bare IP packets. Pod traffic through it is balanced \
                     where it starts (the pod's interface) and reverse-NATed where it ends; but a \
                     NodePort or LoadBalancer with externalTrafficPolicy=Cluster whose backend \
                     is reached through it is SNATed to the external interface's address, so \
                     the backend's replies cross the node network with a pod source address, \
                     which networks that check sources (cloud anti-spoofing) drop. Use a VXLAN \
                     or Geneve overlay, or externalTrafficPolicy=Local"
                );
            }
        }
    }

    /// The external interfaces for now, logged when they change.
    fn choose_external(&self, host: &Host, node: Option<&Node>) -> External {
        let ext = self
            .placement
            .external(node, &host.links, host.default_routes);
        if self.ext.as_ref() != Some(&ext) {
            let names: Vec<&str> = ext.names.iter().map(String::as_str).collect();
            tracing::info!(interfaces = %names.join(", "), how = %ext.how, "external interfaces");
        }
        ext
    }

    fn let_go(&mut self, dp: &mut Dataplane, ifindex: u32) {
        let name = self.attached.remove(&ifindex).map(|a| a.0);
        if let Some(name) = &name {
            self.metrics.set_interface(name, None);
        }
        if let Err(e) = dp.detach(ifindex) {
            tracing::debug!(ifindex, "letting go of a vanished link: {e:#}");
        }
        let _ = dp.maps.remove_node_addr(ifindex);
        tracing::info!(ifindex, name = name.as_deref().unwrap_or("?"), "detached");
    }

    fn attach(&self, dp: &mut Dataplane, link: &Link, role: Role) -> Result<()> {
        match role {
            Role::External => {
                let got = dp.attach_ext(&link.name, self.xdp)?;
                tracing::info!(
                    iface = %link.name,
                    xdp = got.mode.label(),
                    why = got.reason.explain(),
                    "attached (external)"
                );
                self.metrics
                    .set_interface(&link.name, Some(got.mode.label()));
            }
            Role::Pod => {
                dp.attach_pod(&link.name)?;
                tracing::info!(iface = %link.name, "attached (pod)");
            }
            Role::Tunnel => {
                dp.attach_tunnel(&link.name)?;
                tracing::info!(iface = %link.name, "attached (tunnel of the pod overlay)");
            }
        }
        Ok(())
    }

    /// The node address SNATed flows leaving through an external interface or a tunnel take.
    fn set_snat_addr(&self, dp: &mut Dataplane, link: &Link) {
        let result = match link.addrs.first() {
            Some(addr) => dp.maps.set_node_addr(link.index, *addr),
            None => dp.maps.remove_node_addr(link.index),
        };
        if let Err(e) = result {
            tracing::error!(iface = %link.name, "node address: {e:#}");
        }
    }

    pub fn forget_failures(&mut self) {
        self.failed.clear();
    }
}
