//! `lbctl affinity`: ClientIP session-affinity entries (`LB4_AFFINITY`, `LB6_AFFINITY`): which
//! backend a client sticks to for a service port, and for how much longer.
use std::net::IpAddr;

use anyhow::Result;
use serde::Serialize;

use super::{port_label, secs_since, table::Builder, units, Names};
use crate::dataplane::{
    maps::{entries, FamilyMaps},
    reconcile::{AffinityClient, KernelFamily},
    Maps,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityBackend {
    pub id: u32,
    /// Null when the backend is gone (the entry is then ignored by the datapath).
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityRow {
    /// The client's address; null for a client known by its network namespace instead.
    pub client: Option<IpAddr>,
    /// The cookie of the client's network namespace: IPv6 entries the socket hooks made for a
    /// pod's sockets (null otherwise).
    pub client_netns: Option<u64>,
    /// `ns/name`, or null when the backend set is gone.
    pub service: Option<String>,
    pub port_name: Option<String>,
    pub protocol: Option<&'static str>,
    pub service_id: u32,
    pub backend: AffinityBackend,
    /// The service's sessionAffinityConfig timeout (null when the set is gone or no longer has
    /// affinity).
    pub timeout_seconds: Option<u32>,
    /// Seconds since the client last opened a connection through the entry.
    pub idle_seconds: u64,
    /// Seconds until the entry stops applying: timeout - idle, 0 when expired.
    pub seconds_left: u64,
}

/// Every entry of both families, sorted by service port, then client.
pub fn rows(maps: &Maps, now_ns: u64) -> Result<Vec<AffinityRow>> {
    let names = Names::read(maps)?;
    let mut rows = family_rows(maps, &maps.v4, &names, now_ns)?;
    if let Some(v6) = &maps.v6 {
        rows.extend(family_rows(maps, v6, &names, now_ns)?);
    }
    rows.sort_by_cached_key(|r| {
        (
            r.service.clone(),
            r.port_name.clone(),
            r.service_id,
            r.client,
            r.client_netns,
        )
    });
    Ok(rows)
}

fn family_rows<A: KernelFamily + Into<IpAddr>>(
    maps: &Maps,
    family: &FamilyMaps<A>,
    names: &Names,
    now_ns: u64,
) -> Result<Vec<AffinityRow>> {
    let rows = entries(&family.affinity)?
        .into_iter()
        .map(|(key, value)| {
            let (service_id, backend_id) = A::affinity_pair(&key, &value);
            let used = A::affinity_used(&value);
            let name = names.get(service_id);
            let timeout = maps
                .services
                .get(&service_id, 0)
                .ok()
                .filter(|s| s.flags & lb_common::SVC_F_AFFINITY != 0)
                .map(|s| s.affinity_timeout);
            let backend = family
                .backends
                .get(&backend_id, 0)
                .ok()
                .map(|b| A::backend_parts(&b));
            // The datapath's test: now - last_used < timeout (in nanoseconds).
            let left_ns = timeout.map_or(0, |t| {
                (u64::from(t) * 1_000_000_000).saturating_sub(now_ns.saturating_sub(used))
            });
            let (client, client_netns) = match A::affinity_client(&key) {
                AffinityClient::Addr(ip) => (Some(ip), None),
                AffinityClient::Netns(cookie) => (None, Some(cookie)),
            };
            AffinityRow {
                client,
                client_netns,
                service: name.map(|n| n.service.to_string()),
                port_name: name.map(|n| n.port_name.clone()),
                protocol: name.map(|n| n.proto.as_str()),
                service_id,
                backend: AffinityBackend {
                    id: backend_id,
                    ip: backend.map(|(addr, ..)| A::model(addr).into()),
                    port: backend.map(|(_, port, _)| u16::from_be(port)),
                },
                timeout_seconds: timeout,
                idle_seconds: secs_since(now_ns, used),
                seconds_left: left_ns.div_ceil(1_000_000_000),
            }
        })
        .collect();
    Ok(rows)
}

pub fn table(rows: &[AffinityRow]) -> String {
    let mut t = Builder::new(&["SERVICE", "CLIENT", "BACKEND", "TIMEOUT", "IDLE", "LEFT"])
        .right(&[3, 4, 5]);
    for r in rows {
        let service = match (&r.service, &r.port_name, r.protocol) {
            (Some(s), Some(p), Some(proto)) => format!("{}/{proto}", port_label(s, p)),
            _ => format!("? (set {})", r.service_id),
        };
        let backend = match (r.backend.ip, r.backend.port) {
            (Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
            _ => format!("gone (id {})", r.backend.id),
        };
        let client = match (r.client, r.client_netns) {
            (Some(ip), _) => ip.to_string(),
            (None, Some(cookie)) => format!("netns {cookie}"),
            (None, None) => "?".into(),
        };
        t.row(vec![
            service,
            client,
            backend,
            r.timeout_seconds
                .map_or("-".into(), |s| units::duration(s.into())),
            units::duration(r.idle_seconds),
            if r.seconds_left == 0 {
                "expired".into()
            } else {
                units::duration(r.seconds_left)
            },
        ]);
    }
    t.render()
}
