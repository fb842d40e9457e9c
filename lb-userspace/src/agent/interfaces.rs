//! The node's links, their IPv4 and IPv6 addresses and the default routes, from rtnetlink, and
//! notifications when they change.
//!
//! Level-triggered: any link or address notification just says "look again", and the agent
//! rescans the whole (small) table. A missed or coalesced notification can't leave it wrong.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    constants::{
        RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
    },
    packet_route::{
        address::{AddressAttribute, AddressHeader, AddressHeaderFlags, AddressScope},
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        route::{RouteAttribute, RouteHeader, RouteMessage},
    },
    sys::{AsyncSocket, SocketAddr},
    Handle, RouteMessageBuilder,
};
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IPv4 addresses, primary first.
    pub addrs: Vec<Ipv4Addr>,
    /// Global IPv6 addresses (not link-local ones: no Service is reached on those).
    pub addrs6: Vec<Ipv6Addr>,
    /// The bridge (or bond, VRF) this link is a port of.
    pub controller: Option<u32>,
    pub kind: LinkKind,
}

impl Link {
    /// Every address of the link, both families.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.addrs.iter().map(|a| IpAddr::V4(*a));
        v4.chain(self.addrs6.iter().map(|a| IpAddr::V6(*a)))
    }
}

/// What kind of device a link is, as far as placement cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkKind {
    #[default]
    Other,
    /// A Linux bridge.
    Bridge,
    /// A tunnel that carries Ethernet frames between nodes (vxlan, geneve): the pod overlay of
    /// flannel, Calico in VXLAN mode, Antrea.
    Tunnel,
    /// A tunnel of IP packets without Ethernet header (ipip: Calico's IPIP mode, tunl0; sit;
    /// WireGuard): lb's programs parse Ethernet frames, so it attaches none here.
    L3Tunnel,
}

/// What a scan finds.
#[derive(Clone, Debug, Default)]
pub struct Host {
    pub links: BTreeMap<u32, Link>,
    pub default_routes: DefaultRoutes,
}

/// The output interfaces (ifindex) of the main table's default routes, per family (the first of
/// each, if several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultRoutes {
    pub v4: Option<u32>,
    pub v6: Option<u32>,
}

/// A netlink handle for dumps, and a channel that gets a message on every link, address or
/// route change.
pub fn watch() -> Result<(Handle, mpsc::Receiver<()>)> {
    let (mut conn, handle, mut messages) =
        rtnetlink::new_connection().context("opening rtnetlink")?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(
            0,
            // IPv6 too: SLAAC or DHCPv6 may give a node its IPv6 address (a NodePort address)
            // and default route after the agent started.
            RTMGRP_LINK
                | RTMGRP_IPV4_IFADDR
                | RTMGRP_IPV6_IFADDR
                | RTMGRP_IPV4_ROUTE
                | RTMGRP_IPV6_ROUTE,
        ))
        .context("subscribing to link, address and route notifications")?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            // A full channel already holds a "look again".
            let _ = tx.try_send(());
        }
    });
    Ok((handle, rx))
}

/// Every link with its addresses, by ifindex, and the default routes.
pub async fn scan(handle: &Handle) -> Result<Host> {
    let mut links = BTreeMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(msg) = dump.try_next().await.context("listing links")? {
        if let Some(link) = link(&msg) {
            links.insert(link.index, link);
        }
    }
    let mut dump = handle.address().get().execute();
    while let Some(msg) = dump.try_next().await.context("listing addresses")? {
        // IFA_LOCAL is this end's address; IFA_ADDRESS is the peer's on point-to-point links.
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        let addr = local.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            })
        });
        let Some(link) = links.get_mut(&msg.header.index) else {
            continue;
        };
        if let Some(addr) = addr {
            if !link.addrs.contains(&addr) {
                link.addrs.push(addr);
            }
        }
        let v6 = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V6(v6)) => Some(*v6),
            _ => None,
        });
        if let Some(v6) = v6.filter(|_| usable6(&msg.header)) {
            if !link.addrs6.contains(&v6) {
                link.addrs6.push(v6);
            }
        }
    }
    let default_routes = DefaultRoutes {
        v4: default_route(handle, RouteMessageBuilder::<Ipv4Addr>::new().build()).await?,
        v6: default_route(handle, RouteMessageBuilder::<Ipv6Addr>::new().build()).await?,
    };
    Ok(Host {
        links,
        default_routes,
    })
}

/// Whether an IPv6 address is one the node serves on: global scope, past duplicate address
/// detection, and not a privacy (temporary) address, which rotates (the node's affinity and
/// source-range address must not).
fn usable6(header: &AddressHeader) -> bool {
    // For IPv6, IFA_F_SECONDARY is IFA_F_TEMPORARY.
    let unusable = AddressHeaderFlags::Secondary
        | AddressHeaderFlags::Tentative
        | AddressHeaderFlags::Dadfailed;
    header.scope == AddressScope::Universe && !header.flags.intersects(unusable)
}

fn link(msg: &LinkMessage) -> Option<Link> {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        addrs: Vec::new(),
        addrs6: Vec::new(),
        controller: None,
        kind: LinkKind::Other,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::LinkInfo(info) => {
                link.kind = info
                    .iter()
                    .find_map(|i| match i {
                        LinkInfo::Kind(InfoKind::Bridge) => Some(LinkKind::Bridge),
                        LinkInfo::Kind(InfoKind::Vxlan | InfoKind::Geneve) => {
                            Some(LinkKind::Tunnel)
                        }
                        LinkInfo::Kind(InfoKind::IpIp | InfoKind::SitTun | InfoKind::Wireguard) => {
                            Some(LinkKind::L3Tunnel)
                        }
                        _ => None,
                    })
                    .unwrap_or_default()
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// The output interface of the main table's default route of the family `query` dumps (the
/// first, if several).
async fn default_route(handle: &Handle, query: RouteMessage) -> Result<Option<u32>> {
    let mut dump = handle.route().get(query).execute();
    while let Some(msg) = dump.try_next().await.context("listing routes")? {
        if msg.header.table != RouteHeader::RT_TABLE_MAIN
            || msg.header.destination_prefix_length != 0
        {
            continue;
        }
        let oif = msg.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif.is_some() {
            return Ok(oif);
        }
    }
    Ok(None)
}
