//! The control-plane benchmark's cluster (N ClusterIP services of 10 endpoints, and the endpoint
//! changes), kube-proxy's side of it, and its results files; lb's side is in
//! src/bin/lb-bench-control.rs.
//!
//! kube-proxy's programming is timed as the wall time of the command its proxier runs, in a
//! network namespace of its own: from cold, `iptables-restore` (iptables-nft) of its whole
//! ruleset and `nft -f` of its nftables one (one transaction, as kube-proxy writes it, killed at
//! a time limit; and in transactions of 500 services); per endpoint change, the partial syncs
//! of [`kube_proxy::iptables_partial`] and [`kube_proxy::nft_endpoints_changed`]. What
//! kube-proxy computes before running the command is not included.
use std::{
    ffi::OsStr,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    bench_e2e::report::load_average,
    charts::{self, Panel},
    kube_proxy::{self, ServicePort},
    lab::{Lab, Netns},
};

pub const ENDPOINTS: usize = 10;
/// Endpoint changes measured per size (fewer when they exceed the time budget).
pub const CHANGES: usize = 100;
/// kube-proxy's nftables ruleset in transactions of this many services (see docs/bench).
const NFT_BATCH: usize = 500;
/// Where the results go: `control-summary.csv` and the chart.
pub const SUMMARY: &str = "control-summary.csv";
pub const CHART: &str = "control-latency.svg";
/// The summary's columns, [`Row::cells`].
pub const COLUMNS: [&str; 8] = [
    "services",
    "system",
    "cold_ms",
    "change_p50_ms",
    "change_p99_ms",
    "changes",
    "load_avg_1m",
    "note",
];

/// Service `i`'s ClusterIP: 10.96.0.0/12 has room for a million.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32)
}

/// Endpoint `j` of service `i` (10.128.0.0/9 holds 8M), on this node for j even.
pub fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS * 4 + j) as u32)
}

/// Service `i`'s endpoint addresses after change `round` of the benchmark, if it is the one
/// changed: endpoint 0 replaced with a new address (a pod restarting elsewhere).
pub fn endpoint_ips(i: usize, round: Option<usize>) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|j| endpoint_ip(i, j)).collect();
    if let Some(round) = round {
        ips[0] = endpoint_ip(i, ENDPOINTS + 1 + round % (3 * ENDPOINTS - 1));
    }
    ips
}

/// The service changed in round `round` of `n` services (spread over the list).
pub fn changed_service(round: usize, n: usize) -> usize {
    round * 7919 % n
}

/// What the benchmark stops at.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// One `nft -f` of the whole ruleset is killed after this long (it is quadratic).
    pub nft_transaction: Duration,
    /// The endpoint changes of one system at one size stop after this much time in total.
    pub changes: Duration,
}

/// One system's programming latencies at one size. Times in milliseconds; `None` when not
/// measured or killed at a limit (see `note`).
#[derive(Clone, Debug)]
pub struct Row {
    pub services: usize,
    pub system: String,
    pub cold_ms: Option<f64>,
    pub change_p50_ms: Option<f64>,
    pub change_p99_ms: Option<f64>,
    pub changes: usize,
    pub load_avg_1m: f64,
    pub note: String,
}

impl Row {
    pub fn new(services: usize, system: &str) -> Row {
        Row {
            services,
            system: system.to_string(),
            cold_ms: None,
            change_p50_ms: None,
            change_p99_ms: None,
            changes: 0,
            load_avg_1m: load_average(),
            note: String::new(),
        }
    }

    /// The row's fields as text, in the summary's order: times with `decimals`, `missing` for
    /// what was not measured.
    pub fn cells(&self, decimals: usize, missing: &str) -> [String; 8] {
        let time = |v: Option<f64>| v.map_or(missing.to_string(), |v| format!("{v:.decimals$}"));
        [
            self.services.to_string(),
            self.system.clone(),
            time(self.cold_ms),
            time(self.change_p50_ms),
            time(self.change_p99_ms),
            self.changes.to_string(),
            format!("{:.2}", self.load_avg_1m),
            self.note.clone(),
        ]
    }

    /// p50 and p99 of the changes' durations.
    pub fn set_changes(&mut self, mut changes: Vec<Duration>) {
        changes.sort();
        let at = |q: usize| changes.get(changes.len() * q / 100).map(|d| ms(*d));
        (self.change_p50_ms, self.change_p99_ms) = (at(50), at(99));
        self.changes = changes.len();
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// kube-proxy's view of the benchmark's cluster (ClusterIP port 80 → 8080 on every endpoint).
pub fn service_ports(n: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            cluster_ip: cluster_ip(i),
            port: 80,
            node_port: None,
            endpoints: endpoints(i, None),
        })
        .collect()
}

fn endpoints(i: usize, round: Option<usize>) -> Vec<SocketAddrV4> {
    let ips = endpoint_ips(i, round);
    ips.into_iter()
        .map(|ip| SocketAddrV4::new(ip, 8080))
        .collect()
}

fn kube_node() -> kube_proxy::Node {
    kube_proxy::Node {
        cluster_cidr: "10.128.0.0/9".into(),
        service_cidr: "10.96.0.0/12".into(),
    }
}

/// kube-proxy's rows at `n` services: iptables, nftables in batches, nftables in one
/// transaction. Each in a lab namespace of its own, removed before the next.
pub fn kube_proxy(n: usize, limits: Limits) -> Result<Vec<Row>> {
    Ok(vec![
        iptables(n, limits)?,
        nftables_batches(n, limits)?,
        nftables_transaction(n, limits)?,
    ])
}

fn iptables(n: usize, limits: Limits) -> Result<Row> {
    let mut row = Row::new(n, "iptables");
    let (lab, ns) = lab("kp-iptables")?;
    let mut services = service_ports(n);
    let full = kube_proxy::iptables_restore(&services, &kube_node());
    let file = write(&lab, "full.iptables", &full)?;
    row.cold_ms = Some(ms(
        timed(&ns, "iptables-nft-restore", [&file], None)?.context("no limit")?
    ));
    let mut changes = Vec::new();
    let budget = Instant::now();
    for round in (0..CHANGES).take_while(|_| budget.elapsed() < limits.changes) {
        let k = changed_service(round, n);
        services[k].endpoints = endpoints(k, Some(round));
        let changed = |s: &ServicePort| s.name == services[k].name;
        let text = kube_proxy::iptables_partial(&services, &kube_node(), &changed);
        let file = write(&lab, "partial.iptables", &text)?;
        // kube-proxy restores with --noflush (its chains only) and --counters.
        let args = [
            "--noflush".as_ref(),
            "--counters".as_ref(),
            file.as_os_str(),
        ];
        changes.push(timed(&ns, "iptables-nft-restore", args, None)?.context("no limit")?);
    }
    row.set_changes(changes);
    Ok(row)
}

/// The ruleset in transactions of [`NFT_BATCH`] services, then the endpoint changes.
fn nftables_batches(n: usize, limits: Limits) -> Result<Row> {
    let mut row = Row::new(n, "nftables");
    row.note = format!("cold: transactions of {NFT_BATCH} services");
    let (lab, ns) = lab("kp-nftables")?;
    let mut services = service_ports(n);
    let mut cold = Duration::ZERO;
    for (i, batch) in kube_proxy::nft_batches(&services, &kube_node(), NFT_BATCH)
        .iter()
        .enumerate()
    {
        let file = write(&lab, &format!("batch-{i:03}.nft"), batch)?;
        cold += timed(&ns, "nft", ["-f".as_ref(), file.as_os_str()], None)?.context("no limit")?;
    }
    row.cold_ms = Some(ms(cold));
    let mut changes = Vec::new();
    let budget = Instant::now();
    for round in (0..CHANGES).take_while(|_| budget.elapsed() < limits.changes) {
        let k = changed_service(round, n);
        let removed = services[k].endpoints[0];
        services[k].endpoints = endpoints(k, Some(round));
        let text = kube_proxy::nft_endpoints_changed(&services[k], &[removed], &kube_node());
        let file = write(&lab, "change.nft", &text)?;
        let args = ["-f".as_ref(), file.as_os_str()];
        changes.push(timed(&ns, "nft", args, None)?.context("no limit")?);
    }
    row.set_changes(changes);
    Ok(row)
}

/// The ruleset in one transaction, as kube-proxy writes it, killed at the limit.
fn nftables_transaction(n: usize, limits: Limits) -> Result<Row> {
    let mut row = Row::new(n, "nftables-1tx");
    let (lab, ns) = lab("kp-nft-1tx")?;
    let file = write(
        &lab,
        "full.nft",
        &kube_proxy::nft_script(&service_ports(n), &kube_node()),
    )?;
    let args = ["-f".as_ref(), file.as_os_str()];
    match timed(&ns, "nft", args, Some(limits.nft_transaction))? {
        Some(took) => row.cold_ms = Some(ms(took)),
        None => row.note = format!("killed after {:?}", limits.nft_transaction),
    }
    Ok(row)
}

fn lab(name: &str) -> Result<(Lab, Netns)> {
    let lab = Lab::new(&format!("bench-control-{name}"))?;
    let ns = lab.netns("node")?;
    Ok((lab, ns))
}

fn write(lab: &Lab, name: &str, text: &str) -> Result<std::path::PathBuf> {
    let path = lab.log_dir().join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Wall time of `program args` in `ns`, process start included (kube-proxy starts one per
/// sync too). `None` when it was killed at `limit`; an error when it failed.
fn timed<I, S>(
    ns: &Netns,
    program: &str,
    args: I,
    limit: Option<Duration>,
) -> Result<Option<Duration>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let start = Instant::now();
    let mut child = ns.spawn(program, program, args)?;
    // Polled every millisecond: ChildGuard::wait_timeout backs off to 50 ms.
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!(
                    "{program} in {} ended {status}: {}",
                    ns.name(),
                    child.stderr()
                );
            }
            return Ok(Some(start.elapsed()));
        }
        if limit.is_some_and(|l| start.elapsed() > l) {
            child.kill()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `control-summary.csv` and the chart in `dir`.
pub fn write_results(dir: &Path, rows: &[Row]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut csv = format!("{}\n", COLUMNS.join(","));
    for r in rows {
        let mut cells = r.cells(3, "");
        cells[7] = cells[7].replace(',', ";");
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    std::fs::write(dir.join(SUMMARY), csv)?;
    write_chart(rows, &dir.join(CHART))
}

/// The rows of a results directory's `control-summary.csv` (to draw the chart again).
pub fn read_summary(dir: &Path) -> Result<Vec<Row>> {
    let path = dir.join(SUMMARY);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines().skip(1).map(parse_row).collect()
}

fn parse_row(line: &str) -> Result<Row> {
    let f: Vec<&str> = line.splitn(8, ',').collect();
    let [services, system, cold, p50, p99, changes, load, note] = f[..] else {
        bail!("{SUMMARY}: not 8 fields: {line}");
    };
    let opt = |v: &str| (!v.is_empty()).then(|| v.parse()).transpose();
    Ok(Row {
        services: services.parse()?,
        system: system.to_string(),
        cold_ms: opt(cold)?,
        change_p50_ms: opt(p50)?,
        change_p99_ms: opt(p99)?,
        changes: changes.parse()?,
        load_avg_1m: load.parse()?,
        note: note.to_string(),
    })
}

/// Programming latency against the number of services, log-log: from cold, and one change (p99).
pub fn write_chart(rows: &[Row], path: &Path) -> Result<()> {
    let panel = |title: &str, y: fn(&Row) -> Option<f64>| {
        let points = rows
            .iter()
            .filter_map(|r| Some((r.system.clone(), (r.services as f64, y(r)?))));
        Panel {
            title: title.to_string(),
            x_desc: "services (10 endpoints each)",
            y_desc: "ms",
            log_y: true,
            series: charts::series_by_label(points),
        }
    };
    let panels = [
        panel("programming from cold", |r| r.cold_ms),
        panel("one endpoint change, p99", |r| r.change_p99_ms),
    ];
    charts::write_svg(path, &panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_the_changes() {
        let mut row = Row::new(10, "lb");
        row.set_changes((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(
            (row.change_p50_ms, row.change_p99_ms),
            (Some(51.0), Some(100.0))
        );
        assert_eq!(row.changes, 100);
        row.set_changes(Vec::new());
        assert_eq!((row.change_p99_ms, row.changes), (None, 0));
    }

    #[test]
    fn a_change_replaces_endpoint_zero_only() {
        let before = endpoint_ips(3, None);
        let after = endpoint_ips(3, Some(5));
        assert_ne!(before[0], after[0]);
        assert_eq!(before[1..], after[1..]);
        assert!(!before.contains(&after[0]), "a new address");
        assert!(
            !endpoint_ips(4, None).contains(&after[0]),
            "not another service's"
        );
    }

    #[test]
    fn results_files_skip_what_was_not_measured() {
        let dir = std::env::temp_dir().join(format!("lb-control-results-{}", std::process::id()));
        let mut lb = Row::new(1000, "lb");
        lb.cold_ms = Some(40.0);
        lb.set_changes(vec![Duration::from_micros(100)]);
        let mut killed = Row::new(1000, "nftables-1tx");
        killed.note = "killed after 1s, at once".into();
        write_results(&dir, &[lb, killed]).unwrap();
        let csv = std::fs::read_to_string(dir.join(SUMMARY)).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[1].starts_with("1000,lb,40.000,0.100,0.100,1,"));
        assert!(lines[2].starts_with("1000,nftables-1tx,,,,0,"));
        assert!(lines[2].ends_with(",killed after 1s; at once"));
        let svg = std::fs::read_to_string(dir.join(CHART)).unwrap();
        assert!(svg.contains("one endpoint change, p99"));
        let read = read_summary(&dir).unwrap();
        assert_eq!(read[0].change_p99_ms, Some(0.1));
        assert_eq!(
            (read[1].cold_ms, read[1].note.as_str()),
            (None, "killed after 1s; at once")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
