//! What the maps hold, read back into named, serializable rows: the `lbctl services` JSON
//! contract (DESIGN.md), also used by tests to compare the maps with what they expect.
use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::{BE_F_LOCAL, BE_F_TERMINATING, SVC_F_AFFINITY, SVC_F_EXT_LOCAL, SVC_F_INT_LOCAL};
use serde::Serialize;

use super::{reconcile::Programmed, Maps};
use crate::model::{Kind, Protocol};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FrontendView {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: &'static str,
    pub kind: &'static str,
    /// "external" (from outside the node) or "internal" (from a pod on this node).
    pub scope: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BackendView {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub local: bool,
    pub terminating: bool,
}

/// One frontend and the backend set it leads to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServiceView {
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
}

/// Every frontend with its set, sorted by service, port name and frontend.
pub fn services(maps: &Maps) -> Result<Vec<ServiceView>> {
    Ok(services_of(&Programmed::read(maps)?))
}

pub fn services_of(programmed: &Programmed) -> Vec<ServiceView> {
    let mut out: Vec<ServiceView> = programmed
        .frontends
        .iter()
        .map(|(key, fe)| {
            let set = programmed.sets.get(&fe.service_id);
            let name = set.and_then(|s| s.key.as_ref());
            let svc = set.map(|s| s.service).unwrap_or_default();
            let backends = set
                .map(|s| {
                    s.slots
                        .iter()
                        .filter_map(|id| programmed.backends.get(id))
                        .map(|b| BackendView {
                            ip: Ipv4Addr::from(b.addr.to_ne_bytes()),
                            port: u16::from_be(b.port),
                            local: b.flags & BE_F_LOCAL != 0,
                            terminating: b.flags & BE_F_TERMINATING != 0,
                        })
                        .collect()
                })
                .unwrap_or_default();
            ServiceView {
                service: name.map_or("?".into(), |k| k.service.to_string()),
                port_name: name.map(|k| k.port_name.clone()).unwrap_or_default(),
                frontend: FrontendView {
                    ip: Ipv4Addr::from(key.addr.to_ne_bytes()),
                    port: u16::from_be(key.port),
                    protocol: Protocol::from_number(key.proto).map_or("?", Protocol::as_str),
                    kind: Kind::from_number(fe.kind).map_or("?", Kind::as_str),
                    scope: if key.scope == lb_common::SCOPE_INTERNAL {
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
            }
        })
        .collect();
    out.sort();
    out
}
