//! Which interfaces carry lb's programs: the `--ext-iface` ones and those matching a
//! `--pod-iface` glob, kept in step with the links that exist. A link that vanishes is let go
//! (the kernel already dropped its attachment; its pin is removed); one that appears is attached.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use glob::Pattern;

use super::{interfaces::Link, RunArgs};
use crate::dataplane::{Dataplane, XdpRequest};

pub struct Attachments {
    ext: BTreeSet<String>,
    pod: Vec<Pattern>,
    xdp: XdpRequest,
    /// ifindex → name of what is attached now.
    attached: BTreeMap<u32, String>,
    /// ifindexes whose attach failed: not retried on every link event (errors would pile up),
    /// only after [`Attachments::forget_failures`] (the periodic resync) or once the link is gone.
    failed: BTreeSet<u32>,
}

impl Attachments {
    pub fn new(args: &RunArgs) -> Result<Self> {
        let pod = args
            .pod_ifaces
            .iter()
            .map(|g| Pattern::new(g).with_context(|| format!("--pod-iface {g:?}")))
            .collect::<Result<_>>()?;
        Ok(Attachments {
            ext: args.ext_ifaces.iter().cloned().collect(),
            pod,
            xdp: args.xdp_mode.into(),
            attached: BTreeMap::new(),
            failed: BTreeSet::new(),
        })
    }

    fn wanted(&self, name: &str) -> bool {
        self.ext.contains(name) || self.pod.iter().any(|p| p.matches(name))
    }

    /// Attach to wanted links not yet attached, let go of those gone. `first` also detaches
    /// what a previous agent attached to links no longer wanted.
    pub fn sync(&mut self, dp: &mut Dataplane, links: &BTreeMap<u32, Link>, first: bool) {
        let stale: Vec<u32> = if first {
            dp.attached()
        } else {
            self.attached.keys().copied().collect()
        };
        for ifindex in stale {
            let keep = links.get(&ifindex).is_some_and(|l| self.wanted(&l.name));
            if !keep {
                let name = self.attached.remove(&ifindex);
                if let Err(e) = dp.detach(ifindex) {
                    tracing::debug!(ifindex, "letting go of a vanished link: {e:#}");
                }
                let _ = dp.maps.remove_node_addr(ifindex);
                tracing::info!(ifindex, name = name.as_deref().unwrap_or("?"), "detached");
            }
        }
        self.failed.retain(|i| links.contains_key(i));
        for link in links.values() {
            if !self.wanted(&link.name)
                || self.attached.get(&link.index) == Some(&link.name)
                || self.failed.contains(&link.index)
            {
                continue;
            }
            match self.attach(dp, link) {
                Ok(()) => {
                    self.attached.insert(link.index, link.name.clone());
                }
                Err(e) => {
                    tracing::error!(iface = %link.name, "attach failed: {e:#}");
                    self.failed.insert(link.index);
                }
            }
        }
        for link in links.values().filter(|l| self.ext.contains(&l.name)) {
            self.set_snat_addr(dp, link);
        }
    }

    fn attach(&self, dp: &mut Dataplane, link: &Link) -> Result<()> {
        if self.ext.contains(&link.name) {
            let mode = dp.attach_ext(&link.name, self.xdp)?;
            tracing::info!(iface = %link.name, ?mode, "attached (external)");
        } else {
            dp.attach_pod(&link.name)?;
            tracing::info!(iface = %link.name, "attached (pod)");
        }
        Ok(())
    }

    /// The node address SNATed flows leaving through an external interface take.
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

    /// IPv4 addresses of the external interfaces present now.
    pub fn ext_addrs(&self, links: &BTreeMap<u32, Link>) -> Vec<Ipv4Addr> {
        links
            .values()
            .filter(|l| self.ext.contains(&l.name))
            .flat_map(|l| l.addrs.iter().copied())
            .collect()
    }
}
