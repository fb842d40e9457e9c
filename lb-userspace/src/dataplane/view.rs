//! What the maps hold, read back into named, serializable rows. [`frontends`] has one row per
//! kernel frontend entry (address, port, protocol and scope); [`services`] merges the two scopes
//! into the `lbctl services` JSON contract (README, "lbctl"): one entry per frontend.
use crate::dataplane::reconcile::Code;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use lb_common::{BE_F_LOCAL, BE_F_TERMINATING, SVC_F_AFFINITY, SVC_F_EXT_LOCAL, SVC_F_INT_LOCAL};
use serde::Serialize;

use super::reconcile::{DualMaps, KernelFamily, Programmed};
use crate::model::{Kind, Protocol};

/// Addresses as JSON shows them: canonical strings, IPv4 before IPv6.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FrontendView {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub kind: &'static str,
    /// "external" (from outside the node) or "internal" (from a pod on this node).
    pub scope: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BackendView {
    pub ip: IpAddr,
    pub port: u16,
    pub local: bool,
    pub terminating: bool,
}

impl BackendView {
    /// A backend as the maps hold it.
    pub fn of<A: KernelFamily>(b: &A::Backend) -> Self {
        let (addr, port, flags) = A::backend_parts(b);
        BackendView {
            ip: A::model(addr).into(),
            port: u16::from_be(port),
            local: flags & BE_F_LOCAL != 0,
            terminating: flags & BE_F_TERMINATING != 0,
        }
    }
}

/// One kernel frontend entry (one scope) and the backend set it leads to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FrontendRow {
    /// `namespace/name`, or `?` for a set without a name entry.
    pub service: String,
    pub port_name: String,
    pub frontend: FrontendView,
    pub backends: Vec<BackendView>,
    pub session_affinity_timeout: Option<u32>,
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
    pub service_id: u32,
    pub stats_id: u32,
    /// loadBalancerSourceRanges (CIDRs) this entry admits new flows from; empty: any source.
    pub source_ranges: Vec<String>,
}

/// Every kernel frontend entry of both families with its set, sorted by service, port name and
/// frontend.
pub fn frontends(maps: &impl DualMaps) -> Result<Vec<FrontendRow>> {
    let mut rows = frontends_of(&Programmed::<Ipv4Addr>::read(maps)?);
    rows.extend(frontends_of(&Programmed::<Ipv6Addr>::read(maps)?));
    rows.sort();
    Ok(rows)
}

pub fn frontends_of<A: KernelFamily>(programmed: &Programmed<A>) -> Vec<FrontendRow> {
    let mut out: Vec<FrontendRow> = programmed
        .frontends
        .iter()
        .map(|(key, fe)| {
            let (addr, port, proto, scope) = A::frontend_parts(key);
            let set = programmed.sets.get(&fe.service_id);
            let name = set.and_then(|s| s.key.as_ref());
            let svc = set.map(|s| s.service).unwrap_or_default();
            let backends = set
                .map(|s| {
                    s.slots
                        .iter()
                        .filter_map(|id| programmed.backends.get(id))
                        .map(BackendView::of::<A>)
                        .collect()
                })
                .unwrap_or_default();
            FrontendRow {
                service: name.map_or("?".into(), |k| k.service.to_string()),
                port_name: name.map(|k| k.port_name.clone()).unwrap_or_default(),
                frontend: FrontendView {
                    ip: A::model(addr).into(),
                    port: u16::from_be(port),
                    protocol: Protocol::from_code(proto).map_or("?", Protocol::as_str),
                    kind: Kind::from_code(fe.kind).map_or("?", Kind::as_str),
                    scope: if scope == lb_common::SCOPE_INTERNAL {
                        "internal"
                    } else {
                        "external"
                    },
                },
                backends,
                session_affinity_timeout: (svc.flags & SVC_F_AFFINITY != 0)
                    .then_some(svc.affinity_timeout),
                external_traffic_local: svc.flags & SVC_F_EXT_LOCAL != 0,
                internal_traffic_local: svc.flags & SVC_F_INT_LOCAL != 0,
                service_id: fe.service_id,
                stats_id: fe.stats_id,
                source_ranges: ranges_of(programmed, fe),
            }
        })
        .collect();
    out.sort();
    out
}

/// A flagged frontend's source ranges as CIDR strings.
fn ranges_of<A: KernelFamily>(
    programmed: &Programmed<A>,
    fe: &lb_common::Frontend4,
) -> Vec<String> {
    if fe.flags & lb_common::FE_F_SOURCE_RANGES == 0 {
        return Vec::new();
    }
    let ranges = programmed
        .ranges
        .get(&fe.stats_id)
        .map_or(&[][..], Vec::as_slice);
    let mut ranges: Vec<(A, u8)> = ranges
        .iter()
        .map(|(addr, len)| (A::model(*addr), *len))
        .collect();
    ranges.sort_unstable();
    ranges
        .iter()
        .map(|(ip, len)| format!("{ip}/{len}"))
        .collect()
}

/// A frontend as `lbctl services` shows it: both scopes in one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    pub service: String,
    pub port_name: String,
    pub frontend: FrontendKeyView,
    /// The backends of traffic from outside the node (for a ClusterIP, from anywhere).
    pub backends: Vec<BackendView>,
    /// The backends of traffic from pods on this node, when they differ (eTP=Local: pods use
    /// every endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_backends: Option<Vec<BackendView>>,
    pub session_affinity_timeout: Option<u32>,
    /// The service port's policies (not only this frontend's set).
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
    /// The set and counters of the external-scope entry.
    pub service_id: u32,
    pub stats_id: u32,
    /// loadBalancerSourceRanges of a LoadBalancer IP (CIDRs): new flows from other sources are
    /// dropped. Empty: no filtering.
    pub source_ranges: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendKeyView {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub kind: &'static str,
}

/// One entry per frontend (address, port, protocol), sorted like [`frontends`].
pub fn services(maps: &impl DualMaps) -> Result<Vec<ServiceView>> {
    Ok(services_of(&frontends(maps)?))
}

pub fn services_of(rows: &[FrontendRow]) -> Vec<ServiceView> {
    use std::collections::BTreeMap;
    let mut policies: BTreeMap<(&str, &str), (bool, bool)> = BTreeMap::new();
    for r in rows {
        let p = policies.entry((&r.service, &r.port_name)).or_default();
        p.0 |= r.external_traffic_local;
        p.1 |= r.internal_traffic_local;
    }
    let mut out: Vec<ServiceView> = Vec::new();
    // Rows sort external before internal for the same service, port name and frontend.
    for r in rows {
        let f = &r.frontend;
        let same = |v: &ServiceView| {
            v.service == r.service
                && v.frontend.ip == f.ip
                && v.frontend.port == f.port
                && v.frontend.protocol == f.protocol
        };
        if let Some(v) = out.last_mut().filter(|v| same(v)) {
            if v.backends != r.backends {
                v.pod_backends = Some(r.backends.clone());
            }
            continue;
        }
        let (ext_local, int_local) = policies[&(r.service.as_str(), r.port_name.as_str())];
        out.push(ServiceView {
            service: r.service.clone(),
            port_name: r.port_name.clone(),
            frontend: FrontendKeyView {
                ip: f.ip,
                port: f.port,
                protocol: f.protocol,
                kind: f.kind,
            },
            backends: r.backends.clone(),
            pod_backends: None,
            session_affinity_timeout: r.session_affinity_timeout,
            external_traffic_local: ext_local,
            internal_traffic_local: int_local,
            service_id: r.service_id,
            stats_id: r.stats_id,
            source_ranges: r.source_ranges.clone(),
        });
    }
    out
}
