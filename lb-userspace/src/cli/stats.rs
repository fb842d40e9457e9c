//! `lbctl stats`: packets and bytes per frontend (`LB_FRONTEND_STATS`, per CPU, summed) and the
//! datapath's global counters (`LB_GLOBAL_STATS`: rejects, drops, conntrack events). `--watch`
//! refreshes and adds rates. Beside the packet counters: the connect()/sendmsg() calls the socket
//! hooks translated per frontend (`LB_SOCK_STATS`), and where and how those hooks run.
use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use super::{port_label, table::Builder, units, Format};
use crate::dataplane::{
    socket_lb,
    view::{self, FrontendView},
    Maps, SocketLbMode,
};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrontendStats {
    pub service: String,
    pub port_name: String,
    pub frontend: FrontendView,
    pub stats_id: u32,
    pub packets: u64,
    pub bytes: u64,
    /// connect()/sendmsg() calls the socket hooks sent to a backend of this frontend (their
    /// packets never pass the frontend, so they are not in `packets`).
    pub socket_translations: u64,
    /// New flows dropped for a source outside the frontend's loadBalancerSourceRanges.
    pub source_range_drops: u64,
    /// With `--watch`, from the second refresh on: the rates over the last interval.
    pub packets_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlobalStat {
    pub value: u64,
    pub per_second: Option<f64>,
}

/// The socket hooks as the agent configured them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SocketLbState {
    /// "host", "all" or "off" (`--socket-lb`).
    pub mode: &'static str,
    /// The cgroup v2 directory the hooks are attached to (null when off).
    pub cgroup: Option<String>,
    /// That cgroup's id (its inode number; null when off).
    pub cgroup_id: Option<u64>,
}

impl SocketLbState {
    fn read(maps: &Maps) -> Result<Self> {
        let cfg = maps.sock_config()?;
        let mode = SocketLbMode::from_code(cfg.mode).unwrap_or(SocketLbMode::Off);
        let on = mode != SocketLbMode::Off;
        Ok(SocketLbState {
            mode: mode.name(),
            cgroup: on.then(|| socket_lb::config_path(&cfg)),
            cgroup_id: on.then_some(cfg.cgroup_id),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    /// One entry per frontend, in `lbctl services` order.
    pub frontends: Vec<FrontendStats>,
    /// Every global counter by name (`lb_common::stat::NAMES`), sorted.
    pub global: BTreeMap<&'static str, u64>,
    /// Sum of the `reject_*` counters: new flows answered with RST / ICMP unreachable.
    pub rejects: u64,
    /// Sum of the `drop_*` counters: packets dropped by the datapath.
    pub drops: u64,
    /// With `--watch` (null otherwise, and on the first refresh): rates of the global counters.
    pub global_per_second: Option<BTreeMap<&'static str, f64>>,
    /// With `--watch`: the seconds the rates are measured over.
    pub interval_seconds: Option<f64>,
    /// Sum of the frontends' `socket_translations`.
    pub socket_translations: u64,
    pub socket_lb: SocketLbState,
}

/// The previous reading, for rates.
struct Previous {
    at: Instant,
    frontends: BTreeMap<(FrontendView, u32), (u64, u64)>,
    global: BTreeMap<&'static str, u64>,
}

impl Snapshot {
    pub fn read(maps: &Maps, previous: Option<&(Instant, Snapshot)>) -> Result<Self> {
        let now = Instant::now();
        let mut frontends = Vec::new();
        for s in view::frontends(maps)? {
            let c = maps.frontend_counters(s.stats_id)?;
            frontends.push(FrontendStats {
                service: s.service,
                port_name: s.port_name,
                frontend: s.frontend,
                stats_id: s.stats_id,
                packets: c.packets,
                bytes: c.bytes,
                socket_translations: maps.socket_translations(s.stats_id)?,
                source_range_drops: maps.source_range_drops(s.stats_id)?,
                packets_per_second: None,
                bytes_per_second: None,
            });
        }
        let global = maps.global_counters()?;
        let sum = |prefix: &str| {
            global
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| *v)
                .sum()
        };
        let mut snap = Snapshot {
            socket_translations: frontends.iter().map(|f| f.socket_translations).sum(),
            socket_lb: SocketLbState::read(maps)?,
            frontends,
            rejects: sum("reject_"),
            drops: sum("drop_"),
            global,
            global_per_second: None,
            interval_seconds: None,
        };
        if let Some((at, prev)) = previous {
            snap.add_rates(&Previous::of(*at, prev), now);
        }
        Ok(snap)
    }

    fn add_rates(&mut self, prev: &Previous, now: Instant) {
        let secs = now.duration_since(prev.at).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        // A counter that went down was reset (its frontend was replaced): rate from zero.
        let rate = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now) as f64 / secs;
        for f in &mut self.frontends {
            let (p, b) = prev
                .frontends
                .get(&(f.frontend.clone(), f.stats_id))
                .copied()
                .unwrap_or((0, 0));
            f.packets_per_second = Some(rate(f.packets, p));
            f.bytes_per_second = Some(rate(f.bytes, b));
        }
        self.global_per_second = Some(
            self.global
                .iter()
                .map(|(k, v)| (*k, rate(*v, prev.global.get(k).copied().unwrap_or(0))))
                .collect(),
        );
        self.interval_seconds = Some(secs);
    }
}

impl Previous {
    fn of(at: Instant, snap: &Snapshot) -> Self {
        Previous {
            at,
            frontends: snap
                .frontends
                .iter()
                .map(|f| ((f.frontend.clone(), f.stats_id), (f.packets, f.bytes)))
                .collect(),
            global: snap.global.clone(),
        }
    }
}

/// Print a snapshot every `every` until interrupted, or `count` times.
pub fn watch(
    maps: &Maps,
    format: Format,
    every: Duration,
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<()> {
    let clear = format == Format::Table && std::io::stdout().is_terminal();
    let mut previous: Option<(Instant, Snapshot)> = None;
    let mut done = 0u64;
    loop {
        let at = Instant::now();
        let snap = Snapshot::read(maps, previous.as_ref())?;
        match format {
            Format::Json => {
                serde_json::to_writer(&mut *out, &snap)?;
                writeln!(out)?;
            }
            Format::Table => {
                if clear {
                    // Home and clear the screen, as watch(1) does.
                    write!(out, "\x1b[H\x1b[2J")?;
                } else if done > 0 {
                    writeln!(out)?;
                }
                writeln!(out, "Every {}s: lbctl stats\n", every.as_secs_f64())?;
                writeln!(out, "{}", table(&snap))?;
            }
        }
        out.flush()?;
        done += 1;
        if count.is_some_and(|c| done >= c) {
            return Ok(());
        }
        previous = Some((at, snap));
        std::thread::sleep(every);
    }
}

pub fn table(snap: &Snapshot) -> String {
    let rates = snap.interval_seconds.is_some();
    let mut header = vec![
        "SERVICE", "FRONTEND", "KIND", "SCOPE", "PACKETS", "BYTES", "SOCKETS",
    ];
    if rates {
        header.extend(["PACKETS/S", "BYTES/S"]);
    }
    let mut t = Builder::new(&header).right(&[4, 5, 6, 7, 8]);
    for f in &snap.frontends {
        let mut row = vec![
            port_label(&f.service, &f.port_name),
            format!(
                "{}/{}",
                SocketAddr::new(f.frontend.ip, f.frontend.port),
                f.frontend.protocol
            ),
            f.frontend.kind.into(),
            f.frontend.scope.into(),
            units::packets(f.packets),
            units::bytes(f.bytes),
            units::count(f.socket_translations),
        ];
        if rates {
            row.push(units::packets_rate(f.packets_per_second.unwrap_or(0.0)));
            row.push(units::bytes_rate(f.bytes_per_second.unwrap_or(0.0)));
        }
        t.row(row);
    }
    let mut header = vec!["COUNTER", "VALUE"];
    if rates {
        header.push("PER SECOND");
    }
    let mut g = Builder::new(&header).right(&[1, 2]);
    for (name, value) in &snap.global {
        let mut row = vec![name.to_string(), units::count(*value)];
        if let Some(per) = &snap.global_per_second {
            let r = per.get(name).copied().unwrap_or(0.0);
            row.push(if r == 0.0 {
                "0".into()
            } else {
                format!("{r:.1}")
            });
        }
        g.row(row);
    }
    let sock = &snap.socket_lb;
    format!(
        "{}\n\nrejects: {}   drops: {}   socket translations: {} (socket hooks: {}{})\n\n{}",
        t.render(),
        units::count(snap.rejects),
        units::count(snap.drops),
        units::count(snap.socket_translations),
        sock.mode,
        sock.cgroup
            .as_deref()
            .map(|c| format!(" on {c}"))
            .unwrap_or_default(),
        g.render()
    )
}
