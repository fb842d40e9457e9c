//! `lbctl interfaces`: the interfaces lb attached to (`LB_IFACES`), in which XDP mode and why.
use anyhow::Result;
use lb_common::{IFACE_EXTERNAL, IFACE_POD, IFACE_TUNNEL};
use serde::Serialize;

use super::table::Builder;
use crate::dataplane::{maps::entries, Maps, XdpModeUsed, XdpReason};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceRow {
    pub ifindex: u32,
    /// The name when lb attached to it.
    pub name: String,
    /// `"external"` (north-south: XDP, or TC ingress with `--xdp-mode off`), `"pod"` (TC) or
    /// `"tunnel"` (the pod overlay's device: TC).
    pub role: &'static str,
    /// `"native"` or `"generic"`; null where only TC programs run.
    pub xdp_mode: Option<&'static str>,
    /// Why that mode, in words.
    pub reason: String,
    /// Frames lb's XDP program transmitted here (XDP_TX, XDP_REDIRECT) that the kernel dropped
    /// since lb first attached; null where XDP does not run.
    pub transmit_drops: Option<u64>,
}

/// Every recorded interface, sorted by ifindex.
pub fn rows(maps: &Maps) -> Result<Vec<InterfaceRow>> {
    Ok(entries(&maps.ifaces)?
        .into_iter()
        .map(|(ifindex, info)| {
            let mode = XdpModeUsed::from_code(info.xdp_mode);
            InterfaceRow {
                ifindex,
                name: info.name().to_string(),
                role: match info.role {
                    IFACE_EXTERNAL => "external",
                    IFACE_POD => "pod",
                    IFACE_TUNNEL => "tunnel",
                    _ => "(recorded by another lb version)",
                },
                xdp_mode: mode.filter(|m| *m != XdpModeUsed::Off).map(|m| m.label()),
                reason: XdpReason::from_code(info.reason)
                    .map_or("(recorded by another lb version)", |r| r.explain())
                    .to_string(),
                transmit_drops: maps.xmit_drops(ifindex),
            }
        })
        .collect())
}

pub fn table(rows: &[InterfaceRow]) -> String {
    let mut t = Builder::new(&["IFINDEX", "NAME", "ROLE", "XDP", "TX DROPS", "WHY"]).right(&[0, 4]);
    for r in rows {
        t.row(vec![
            r.ifindex.to_string(),
            r.name.clone(),
            r.role.to_string(),
            r.xdp_mode.unwrap_or("-").to_string(),
            r.transmit_drops.map_or("-".into(), |n| n.to_string()),
            r.reason.clone(),
        ]);
    }
    t.render()
}
