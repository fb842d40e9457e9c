//! The conntrack tables as userspace sees them: flow states, the reply key of a flow, and the
//! agent's periodic collection of expired flows. The kernel LRU evicts the least recently used
//! flows when the table is full; expired flows would otherwise sit there (holding SNAT ports)
//! until evicted, so the agent removes them and reports what the tables hold.
use std::collections::BTreeMap;

use anyhow::Result;
use lb_common::{timeout, Ct4, Tuple4, CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_SNAT, PROTO_TCP};

use super::{batch, maps::FlowTable, Maps, PinLayout};

const NS: u64 = 1_000_000_000;

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which stamps conntrack and
/// affinity entries.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * NS + ts.tv_nsec as u64
}

/// A TCP flow's state (None for UDP).
pub fn state(proto: u8, flags: u8) -> Option<&'static str> {
    if proto != PROTO_TCP {
        None
    } else if flags & CT_F_CLOSING != 0 {
        Some("CLOSING")
    } else if flags & CT_F_ESTABLISHED != 0 {
        Some("ESTABLISHED")
    } else {
        Some("SYN")
    }
}

/// The `LB4_RNAT` key of a flow's replies: from the backend to the client, or to the SNAT
/// address and port.
pub fn reply_key(key: &Tuple4, ct: &Ct4) -> Tuple4 {
    let (daddr, dport) = if ct.flags & CT_F_SNAT != 0 {
        (ct.snat_addr, ct.snat_port)
    } else {
        (key.saddr, key.sport)
    };
    Tuple4 {
        saddr: ct.backend_addr,
        daddr,
        sport: ct.backend_port,
        dport,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// What one collection found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Live flows by state: "SYN", "ESTABLISHED", "CLOSING", "UDP".
    pub live: BTreeMap<&'static str, u64>,
    /// Expired flows removed (with their reply entries).
    pub removed: u64,
    /// Reply entries removed whose flow was gone (evicted from a full table, or taken over).
    pub orphans: u64,
}

/// The agent's collector: its own handles on the two conntrack tables (opened from the pins), so
/// that it runs on a thread of its own and a walk of 262k flows never holds up the control loop
/// (a new pod's interface attached, a Service programmed).
pub struct Collector {
    tables: [FlowTable; 2],
}

impl Collector {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        let maps = Maps::open_pinned(layout)?;
        Ok(Collector {
            tables: [maps.tcp_flows, maps.other_flows],
        })
    }

    /// Remove the flows idle beyond their timeout in both directions (the datapath's own rule),
    /// with their reply entries, and count the rest by state; in both tables.
    pub fn collect(&mut self, now: u64) -> Result<Collected> {
        let mut out = Collected::default();
        for table in &mut self.tables {
            collect_table(table, now, &mut out)?;
        }
        Ok(out)
    }

    /// Collect now and then every `interval`, on a thread of its own, handing each result to
    /// `report`, until the process ends.
    pub fn spawn(
        mut self,
        interval: std::time::Duration,
        report: impl Fn(Result<Collected>) + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("conntrack-gc".into())
            .spawn(move || loop {
                report(self.collect(monotonic_ns()));
                std::thread::sleep(interval);
            })
    }
}

fn collect_table(table: &mut FlowTable, now: u64, out: &mut Collected) -> Result<()> {
    for (key, ct) in batch::read_all(&table.ct)? {
        // A closed SNATed flow is kept through the backend's TIME_WAIT: its port stays taken.
        let limit = timeout::hold(key.proto, ct.flags) * NS;
        let rkey = reply_key(&key, &ct);
        // The reply entry at the flow's reply key, if it still names this flow (the datapath
        // may have handed an idle SNAT port to another flow).
        let reply = table
            .rnat
            .get(&rkey, 0)
            .ok()
            .filter(|r| r.client(key.proto) == key);
        let reply_seen = reply.map_or(0, |r| r.last_seen_ns);
        let idle = now.saturating_sub(ct.last_seen_ns.max(reply_seen));
        if idle < limit {
            *out.live
                .entry(state(key.proto, ct.flags).unwrap_or("UDP"))
                .or_default() += 1;
            continue;
        }
        // Compare before delete: the datapath may have replaced the flow at this key since it
        // was read (a client reusing its port); only the flow that was read is removed.
        match table.ct.get(&key, 0) {
            Ok(now_ct) if now_ct.created_ns == ct.created_ns => {}
            _ => continue,
        }
        // Gone already (evicted, or reclaimed by the datapath): nothing to do.
        if table.ct.remove(&key).is_ok() {
            out.removed += 1;
        }
        if table
            .rnat
            .get(&rkey, 0)
            .is_ok_and(|r| r.client(key.proto) == key)
        {
            let _ = table.rnat.remove(&rkey);
        }
    }
    collect_orphans(table, now, out)
}

/// Remove the reply entries no flow owns any more: their flow was evicted from a full table (an
/// LRU evicts the two directions independently) or removed while another flow held the key.
/// Without this they would sit there, holding SNAT ports, until evicted in turn. An orphan is
/// kept as long as its flow's state would hold it, but no longer than TIME_WAIT: with its flow
/// gone it only still guards the port against reuse while the backend may hold the old 4-tuple.
fn collect_orphans(table: &mut FlowTable, now: u64, out: &mut Collected) -> Result<()> {
    for (rkey, rn) in batch::read_all(&table.rnat)? {
        let limit = timeout::hold(rkey.proto, rn.flags).min(timeout::TCP_TIME_WAIT) * NS;
        if now.saturating_sub(rn.last_seen_ns) < limit {
            continue;
        }
        let client = rn.client(rkey.proto);
        let owned = table
            .ct
            .get(&client, 0)
            .is_ok_and(|ct| reply_key(&client, &ct) == rkey);
        if owned {
            continue; // its flow's expiry decides (collect_table)
        }
        // Compare before delete: the datapath may have given the key to a new flow since.
        match table.rnat.get(&rkey, 0) {
            Ok(now_rn)
                if now_rn.last_seen_ns == rn.last_seen_ns
                    && now_rn.client(rkey.proto) == client => {}
            _ => continue,
        }
        if table.rnat.remove(&rkey).is_ok() {
            out.orphans += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::{
        timeout, CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_REPLIED, CT_F_SNAT, PROTO_TCP, PROTO_UDP,
    };

    #[test]
    fn a_closed_snat_flow_holds_its_port_through_time_wait() {
        let closed = CT_F_ESTABLISHED | CT_F_CLOSING;
        let table = [
            (PROTO_TCP, closed, timeout::TCP_CLOSING),
            (PROTO_TCP, closed | CT_F_SNAT, timeout::TCP_TIME_WAIT),
            (
                PROTO_TCP,
                CT_F_ESTABLISHED | CT_F_SNAT,
                timeout::TCP_ESTABLISHED,
            ),
            (PROTO_TCP, CT_F_SNAT, timeout::TCP_SYN),
            (PROTO_UDP, CT_F_SNAT | CT_F_CLOSING, timeout::UDP_UNREPLIED),
            (PROTO_UDP, CT_F_SNAT | CT_F_REPLIED, timeout::UDP),
        ];
        for (proto, flags, want) in table {
            assert_eq!(timeout::hold(proto, flags), want, "{proto} {flags:#x}");
        }
    }
}
