//! The node's links and IPv4 addresses, from rtnetlink, and notifications when they change.
//!
//! Level-triggered: any link or address notification just says "look again", and the agent
//! rescans the whole (small) table. A missed or coalesced notification can't leave it wrong.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK},
    packet_route::{address::AddressAttribute, link::LinkAttribute},
    sys::{AsyncSocket, SocketAddr},
    Handle,
};
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IPv4 addresses, primary first.
    pub addrs: Vec<Ipv4Addr>,
}

/// A netlink handle for dumps, and a channel that gets a message on every link or address
/// change.
pub fn watch() -> Result<(Handle, mpsc::Receiver<()>)> {
    let (mut conn, handle, mut messages) =
        rtnetlink::new_connection().context("opening rtnetlink")?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
        .context("subscribing to link and address notifications")?;
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

/// Every link with its IPv4 addresses, by ifindex.
pub async fn scan(handle: &Handle) -> Result<BTreeMap<u32, Link>> {
    let mut links = BTreeMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(msg) = dump.try_next().await.context("listing links")? {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let index = msg.header.index;
        if let Some(name) = name {
            links.insert(
                index,
                Link {
                    index,
                    name,
                    addrs: Vec::new(),
                },
            );
        }
    }
    let mut dump = handle.address().get().execute();
    while let Some(msg) = dump.try_next().await.context("listing addresses")? {
        // IFA_LOCAL is this end's address; IFA_ADDRESS is the peer's on point-to-point links.
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(std::net::IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        let addr = local.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(std::net::IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            })
        });
        if let (Some(addr), Some(link)) = (addr, links.get_mut(&msg.header.index)) {
            if !link.addrs.contains(&addr) {
                link.addrs.push(addr);
            }
        }
    }
    Ok(links)
}
