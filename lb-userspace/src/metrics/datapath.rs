//! The datapath's counters, read from the pinned per-CPU maps at scrape time: per frontend
//! (labelled by service, port name, frontend, kind and scope), datapath events, transmit drops.
use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{Context as _, Result};
use lb_common::{Counters, SCOPE_INTERNAL};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{Labels, OneLabel};
use crate::{
    dataplane::{
        maps::entries,
        reconcile::{Code, KernelFamily, Programmed},
        Maps, PinLayout,
    },
    model::{Kind, Protocol},
};

/// One programmed frontend: its labels and where the kernel counts its traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSeries {
    pub labels: Labels,
    pub stats_id: u32,
}

/// Counters read from the kernel for one scrape.
#[derive(Clone, Debug, Default)]
pub struct Datapath {
    pub frontends: Vec<(FrontendSeries, Counters)>,
    pub events: BTreeMap<&'static str, u64>,
    /// Transmit drops by external interface name.
    pub xmit_drops: Vec<(String, u64)>,
}

/// Labels for each programmed frontend of family `A`: service, port_name, frontend
/// (ip:port/PROTO, an IPv6 address in brackets), kind and scope (external: from outside the
/// node; internal: from a pod on this node, each counted apart by the kernel).
pub fn frontend_series<A: KernelFamily>(programmed: &Programmed<A>) -> Vec<FrontendSeries> {
    let mut out: Vec<FrontendSeries> = programmed
        .frontends
        .iter()
        .filter_map(|(key, fe)| {
            let set = programmed.sets.get(&fe.service_id)?.key.as_ref()?;
            let (addr, port, proto, scope) = A::frontend_parts(key);
            let addr = SocketAddr::new(A::model(addr).into(), u16::from_be(port));
            let proto = Protocol::from_code(proto).map_or("unknown", Protocol::as_str);
            let kind = Kind::from_code(fe.kind).map_or("unknown", Kind::as_str);
            let scope = if scope == SCOPE_INTERNAL {
                "internal"
            } else {
                "external"
            };
            let labels = vec![
                ("service", set.service.to_string()),
                ("port_name", set.port_name.clone()),
                ("frontend", format!("{addr}/{proto}")),
                ("kind", kind.to_string()),
                ("scope", scope.to_string()),
            ];
            Some(FrontendSeries {
                labels,
                stats_id: fe.stats_id,
            })
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// Open the pinned maps and read the counters of these frontends and the datapath events.
pub fn read_datapath(layout: &PinLayout, series: &[FrontendSeries]) -> Result<Datapath> {
    let maps = Maps::open_pinned(layout).context("opening the pinned maps")?;
    let mut frontends = Vec::with_capacity(series.len());
    for s in series {
        // A frontend removed since the labels were taken has no entry to read: leave it out.
        if let Ok(c) = maps.frontend_counters(s.stats_id) {
            frontends.push((s.clone(), c));
        }
    }
    let xmit_drops = entries(&maps.ifaces)?
        .into_iter()
        .filter_map(|(ifindex, info)| Some((info.name().to_string(), maps.xmit_drops(ifindex)?)))
        .collect();
    Ok(Datapath {
        frontends,
        events: maps.global_counters()?,
        xmit_drops,
    })
}

/// The datapath counters as metrics: traffic per service (summed over its frontends and
/// scopes), or with `per_frontend` per frontend and scope as well.
pub(super) fn datapath_registry(dp: &Datapath, per_frontend: bool) -> Registry {
    let mut registry = Registry::default();
    let (packets, bytes) = traffic_families(&mut registry, "service", "each service");
    for (s, c) in &dp.frontends {
        // The first label is the service's.
        let service = vec![s.labels[0].clone()];
        packets.get_or_create(&service).inc_by(c.packets);
        bytes.get_or_create(&service).inc_by(c.bytes);
    }
    if per_frontend {
        let (packets, bytes) = traffic_families(&mut registry, "frontend", "each frontend");
        for (s, c) in &dp.frontends {
            packets.get_or_create(&s.labels).inc_by(c.packets);
            bytes.get_or_create(&s.labels).inc_by(c.bytes);
        }
    }
    let events = Family::<OneLabel, Counter>::default();
    registry.register(
        "lb_datapath_events",
        "Datapath events: rejects, drops by reason, conntrack and reverse-NAT hits",
        events.clone(),
    );
    for (name, n) in &dp.events {
        events.get_or_create(&[("event", name)]).inc_by(*n);
    }
    let xmit = Family::<Labels, Counter>::default();
    registry.register(
        "lb_xdp_transmit_drops",
        "Frames lb's XDP program transmitted (XDP_TX, XDP_REDIRECT) on each external interface \
         that the kernel dropped: the driver could not deliver them (native XDP on a veth whose \
         peer runs no XDP program, a device without XDP transmit, a full queue)",
        xmit.clone(),
    );
    for (iface, n) in &dp.xmit_drops {
        xmit.get_or_create(&vec![("interface", iface.clone())])
            .inc_by(*n);
    }
    registry
}

/// `lb_<what>_packets` and `lb_<what>_bytes`, registered.
fn traffic_families(
    registry: &mut Registry,
    what: &str,
    help: &str,
) -> (Family<Labels, Counter>, Family<Labels, Counter>) {
    let packets = Family::<Labels, Counter>::default();
    registry.register(
        format!("lb_{what}_packets"),
        format!("Packets the datapath steered through {help}"),
        packets.clone(),
    );
    let bytes = Family::<Labels, Counter>::default();
    registry.register(
        format!("lb_{what}_bytes"),
        format!("Bytes the datapath steered through {help}"),
        bytes.clone(),
    );
    (packets, bytes)
}
