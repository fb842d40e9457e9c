//! `lbctl affinity`: ClientIP session-affinity entries (`LB4_AFFINITY`): which backend a client
//! sticks to for a service port, and for how much longer.
use std::net::Ipv4Addr;

use anyhow::Result;
use serde::Serialize;

use super::{ip_of, port_label, secs_since, table::Builder, units, Names};
use crate::dataplane::{maps::entries, Maps};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityBackend {
    pub id: u32,
    /// Null when the backend is gone (the entry is then ignored by the datapath).
    pub ip: Option<Ipv4Addr>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityRow {
    pub client: Ipv4Addr,
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

/// Every entry, sorted by service port, then client.
pub fn rows(maps: &Maps, now_ns: u64) -> Result<Vec<AffinityRow>> {
    let names = Names::read(maps)?;
    let mut rows: Vec<AffinityRow> = entries(&maps.v4.affinity)?
        .into_iter()
        .map(|(key, value)| {
            let name = names.get(key.service_id);
            let timeout = maps
                .services
                .get(&key.service_id, 0)
                .ok()
                .filter(|s| s.flags & lb_common::SVC_F_AFFINITY != 0)
                .map(|s| s.affinity_timeout);
            let backend = maps.v4.backends.get(&value.backend_id, 0).ok();
            let idle = secs_since(now_ns, value.last_used_ns);
            // The datapath's test: now - last_used < timeout (in nanoseconds).
            let left_ns = timeout.map_or(0, |t| {
                (u64::from(t) * 1_000_000_000)
                    .saturating_sub(now_ns.saturating_sub(value.last_used_ns))
            });
            AffinityRow {
                client: ip_of(key.client),
                service: name.map(|n| n.service.to_string()),
                port_name: name.map(|n| n.port_name.clone()),
                protocol: name.map(|n| n.proto.as_str()),
                service_id: key.service_id,
                backend: AffinityBackend {
                    id: value.backend_id,
                    ip: backend.map(|b| ip_of(b.addr)),
                    port: backend.map(|b| u16::from_be(b.port)),
                },
                timeout_seconds: timeout,
                idle_seconds: idle,
                seconds_left: left_ns.div_ceil(1_000_000_000),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.service, &a.port_name, a.service_id, a.client).cmp(&(
            &b.service,
            &b.port_name,
            b.service_id,
            b.client,
        ))
    });
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
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            _ => format!("gone (id {})", r.backend.id),
        };
        t.row(vec![
            service,
            r.client.to_string(),
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
