//! `lbctl conntrack`: the flows the datapath tracks (`LB4_CT` for TCP, `LB4_CT_ANY` for the rest:
//! one entry per client → frontend 5-tuple), with their reverse-NAT entries (`LB4_RNAT`,
//! `LB4_RNAT_ANY`: keyed by the reply as the backend sends it) and the service port that chose
//! the backend.
use anyhow::{bail, Result};
use lb_common::{timeout, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT};
use serde::Serialize;

use super::{port_label, protocol_name, secs_since, table::Builder, units, Endpoint, Names};
use crate::dataplane::{
    conntrack::{reply_key, state},
    maps::{entries, FlowTable},
    Maps,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendRef {
    pub id: u32,
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackRow {
    /// The client as it sent the packets.
    pub client: Endpoint,
    /// The address it connected to (ClusterIP, node address, ...).
    pub frontend: Endpoint,
    pub backend: BackendRef,
    pub protocol: &'static str,
    /// TCP: "SYN" (the handshake is not complete), "ESTABLISHED" (the backend answered and the
    /// client acknowledged) or "CLOSING" (either side sent FIN or RST). Other protocols: null.
    pub state: Option<&'static str>,
    /// Sorted subset of "external" (the client is outside the node), "hairpin" (a pod reaching
    /// itself through its service) and "snat" (the source is rewritten, see `snat`).
    pub flags: Vec<&'static str>,
    /// The source address and port the backend sees, with the "snat" flag.
    pub snat: Option<Endpoint>,
    /// Whether the reply direction's entry (`LB4_RNAT`) is there.
    pub reverse_nat: bool,
    /// Seconds since the flow's first packet.
    pub age_seconds: u64,
    /// Seconds since a client packet was last seen (updated at most once a second).
    pub idle_seconds: u64,
    /// Seconds since a reply was last seen, when the reverse entry is there.
    pub reply_idle_seconds: Option<u64>,
    /// Seconds until the entry expires if no packet comes (0: expired, kept until reused).
    pub expires_in_seconds: u64,
    /// `ns/name` of the service port, or null when its backend set is gone.
    pub service: Option<String>,
    pub port_name: Option<String>,
    pub service_id: u32,
    pub stats_id: u32,
}

/// Every tracked flow (of the service `filter`, `ns/name` or `ns/name:port-name`, if given),
/// sorted by client, then frontend.
pub fn rows(maps: &Maps, now_ns: u64, filter: Option<&str>) -> Result<Vec<ConntrackRow>> {
    let filter = filter.map(Filter::parse).transpose()?;
    let names = Names::read(maps)?;
    let mut rows = Vec::new();
    for table in maps.flow_tables() {
        table_rows(table, &names, now_ns, filter.as_ref(), &mut rows)?;
    }
    rows.sort_by(|a, b| {
        (a.client, a.frontend, a.protocol).cmp(&(b.client, b.frontend, b.protocol))
    });
    Ok(rows)
}

fn table_rows(
    table: &FlowTable,
    names: &Names,
    now_ns: u64,
    filter: Option<&Filter>,
    rows: &mut Vec<ConntrackRow>,
) -> Result<()> {
    for (key, ct) in entries(&table.ct)? {
        let name = names.get(ct.service_id);
        if let Some(f) = filter {
            let Some(name) = name else { continue };
            if !f.matches(&name.service.to_string(), &name.port_name) {
                continue;
            }
        }
        let reply = table.rnat.get(&reply_key(&key, &ct), 0).ok();
        let idle = secs_since(now_ns, ct.last_seen_ns);
        rows.push(ConntrackRow {
            client: Endpoint::from_wire(key.saddr, key.sport),
            frontend: Endpoint::from_wire(key.daddr, key.dport),
            backend: BackendRef {
                id: ct.backend_id,
                ip: super::ip_of(ct.backend_addr),
                port: u16::from_be(ct.backend_port),
            },
            protocol: protocol_name(key.proto),
            state: state(key.proto, ct.flags),
            flags: flags(ct.flags),
            snat: (ct.flags & CT_F_SNAT != 0)
                .then(|| Endpoint::from_wire(ct.snat_addr, ct.snat_port)),
            reverse_nat: reply.is_some(),
            age_seconds: secs_since(now_ns, ct.created_ns),
            idle_seconds: idle,
            reply_idle_seconds: reply.map(|r| secs_since(now_ns, r.last_seen_ns)),
            expires_in_seconds: timeout::idle(key.proto, ct.flags).saturating_sub(idle),
            service: name.map(|n| n.service.to_string()),
            port_name: name.map(|n| n.port_name.clone()),
            service_id: ct.service_id,
            stats_id: ct.stats_id,
        });
    }
    Ok(())
}

pub fn table(rows: &[ConntrackRow]) -> String {
    let mut t = Builder::new(&[
        "SERVICE", "PROTO", "CLIENT", "FRONTEND", "BACKEND", "STATE", "FLAGS", "AGE", "IDLE",
        "EXPIRES",
    ])
    .right(&[7, 8, 9]);
    for r in rows {
        let mut flags = r.flags.join(",");
        if let Some(snat) = r.snat {
            flags = format!("{flags} via {snat}");
        }
        t.row(vec![
            match (&r.service, &r.port_name) {
                (Some(s), Some(p)) => port_label(s, p),
                _ => format!("? (set {})", r.service_id),
            },
            r.protocol.into(),
            r.client.to_string(),
            r.frontend.to_string(),
            format!("{}:{}", r.backend.ip, r.backend.port),
            r.state.unwrap_or("-").into(),
            if flags.is_empty() { "-".into() } else { flags },
            units::duration(r.age_seconds),
            units::duration(r.idle_seconds),
            if r.expires_in_seconds == 0 {
                "expired".into()
            } else {
                units::duration(r.expires_in_seconds)
            },
        ]);
    }
    t.render()
}

fn flags(flags: u8) -> Vec<&'static str> {
    [
        (CT_F_EXTERNAL, "external"),
        (CT_F_HAIRPIN, "hairpin"),
        (CT_F_SNAT, "snat"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// `--service ns/name[:port-name]`.
struct Filter {
    service: String,
    port_name: Option<String>,
}

impl Filter {
    fn parse(text: &str) -> Result<Self> {
        let (service, port_name) = match text.split_once(':') {
            Some((s, p)) => (s, Some(p.to_string())),
            None => (text, None),
        };
        match service.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Filter {
                    service: service.to_string(),
                    port_name,
                })
            }
            _ => bail!("--service {text:?}: expected NAMESPACE/NAME or NAMESPACE/NAME:PORT-NAME"),
        }
    }

    fn matches(&self, service: &str, port_name: &str) -> bool {
        service == self.service && self.port_name.as_deref().is_none_or(|p| p == port_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{CT_F_CLOSING, CT_F_ESTABLISHED, PROTO_TCP};

    #[test]
    fn states_and_flags() {
        assert_eq!(state(PROTO_TCP, 0), Some("SYN"));
        assert_eq!(state(PROTO_TCP, CT_F_ESTABLISHED), Some("ESTABLISHED"));
        assert_eq!(
            state(PROTO_TCP, CT_F_ESTABLISHED | CT_F_CLOSING),
            Some("CLOSING")
        );
        assert_eq!(state(lb_common::PROTO_UDP, CT_F_ESTABLISHED), None);
        assert_eq!(
            flags(CT_F_SNAT | CT_F_EXTERNAL | CT_F_ESTABLISHED),
            ["external", "snat"]
        );
        assert_eq!(flags(CT_F_HAIRPIN | CT_F_SNAT), ["hairpin", "snat"]);
    }

    #[test]
    fn service_filter() {
        let f = Filter::parse("shop/web").unwrap();
        assert!(f.matches("shop/web", "http"));
        assert!(!f.matches("shop/webx", "http"));
        let f = Filter::parse("shop/web:http").unwrap();
        assert!(f.matches("shop/web", "http"));
        assert!(!f.matches("shop/web", "https"));
        assert!(Filter::parse("web").is_err());
        assert!(Filter::parse("/web").is_err());
    }
}
