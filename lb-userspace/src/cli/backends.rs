//! `lbctl backends`: every backend of both families (`LB4_BACKENDS`, `LB6_BACKENDS`) and the
//! service ports whose sets use it.
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Result;
use serde::Serialize;

use super::{port_label, table::Builder};
use crate::dataplane::{
    reconcile::{KernelFamily, Programmed},
    view::BackendView,
    Maps, ServiceMaps,
};

/// A service port, in JSON `{"service": "ns/name", "port_name": ..., "protocol": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServicePort {
    pub service: String,
    pub port_name: String,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendRow {
    /// The backend id (conntrack and affinity entries name backends by it).
    pub id: u32,
    pub ip: IpAddr,
    pub port: u16,
    pub local: bool,
    pub terminating: bool,
    /// The service ports whose backend sets hold it, sorted; empty for a backend no set uses.
    pub services: Vec<ServicePort>,
}

/// Every backend of both families, sorted by address (IPv4 first), port and id.
pub fn rows(maps: &Maps) -> Result<Vec<BackendRow>> {
    let mut rows = family_rows::<Ipv4Addr>(maps)?;
    rows.extend(family_rows::<Ipv6Addr>(maps)?);
    rows.sort_by_key(|r| (r.ip, r.port, r.id));
    Ok(rows)
}

fn family_rows<A: KernelFamily>(maps: &impl ServiceMaps<A>) -> Result<Vec<BackendRow>> {
    let programmed = Programmed::<A>::read(maps)?;
    let mut users: HashMap<u32, BTreeSet<ServicePort>> = HashMap::new();
    for set in programmed.sets.values() {
        let Some(key) = &set.key else { continue };
        for id in &set.slots {
            users.entry(*id).or_default().insert(ServicePort {
                service: key.service.to_string(),
                port_name: key.port_name.clone(),
                protocol: key.proto.as_str(),
            });
        }
    }
    let rows = programmed.backends.iter().map(|(id, b)| {
        let view = BackendView::of::<A>(b);
        BackendRow {
            id: *id,
            ip: view.ip,
            port: view.port,
            local: view.local,
            terminating: view.terminating,
            services: users.remove(id).unwrap_or_default().into_iter().collect(),
        }
    });
    Ok(rows.collect())
}

pub fn table(rows: &[BackendRow]) -> String {
    let mut t = Builder::new(&["ID", "BACKEND", "LOCAL", "TERMINATING", "SERVICES"]).right(&[0]);
    for r in rows {
        let services: Vec<String> = r
            .services
            .iter()
            .map(|s| format!("{}/{}", port_label(&s.service, &s.port_name), s.protocol))
            .collect();
        t.row(vec![
            r.id.to_string(),
            SocketAddr::new(r.ip, r.port).to_string(),
            yes_no(r.local),
            yes_no(r.terminating),
            if services.is_empty() {
                "-".into()
            } else {
                services.join("\n")
            },
        ]);
    }
    t.render()
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}
