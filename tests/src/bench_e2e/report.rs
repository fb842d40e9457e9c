//! Results: one JSON line per measurement as it is taken (`e2e-runs.jsonl`), the medians over
//! repetitions (`e2e-summary.csv`, and a table on stdout), how they compare with the issue's
//! targets, and what machine and load they were taken under (`e2e-meta.json`).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::traffic::{Closer, LoadReport};
use crate::charts::{self, Panel};

/// One mode, service count, path and repetition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub services: usize,
    pub mode: String,
    /// `clusterip` (from the client pod) or `nodeport` (from the outside client).
    pub path: String,
    pub rep: usize,
    /// Concurrent connection loops of the client.
    pub conns: usize,
    /// Which side closed connections first.
    pub closer: Closer,
    /// How long the mode took to program all services and answer (lab already built).
    pub program_secs: f64,
    /// The machine's 1-minute load average when the measurement started.
    pub load_avg_1m: f64,
    pub unix_time: u64,
    #[serde(flatten)]
    pub report: LoadReport,
}

impl Measurement {
    pub fn progress_line(&self) -> String {
        format!(
            "services={} mode={} path={} rep={}: {:.0} conn/s, p50 {} us, p99 {} us, {} errors \
             (programmed in {:.1} s, load {:.2})",
            self.services,
            self.mode,
            self.path,
            self.rep,
            self.report.conns_per_sec,
            self.report.p50_us,
            self.report.p99_us,
            self.report.errors,
            self.program_secs,
            self.load_avg_1m
        )
    }
}

/// The median over repetitions of one (services, path, mode).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub services: usize,
    pub path: String,
    pub mode: String,
    pub reps: usize,
    pub conns_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// Medians per (services, path, mode), in that order; modes in the order first measured.
pub fn summarize(all: &[Measurement]) -> Vec<Row> {
    let mut groups: BTreeMap<(usize, &str, usize), Vec<&Measurement>> = BTreeMap::new();
    let mode_order: Vec<&str> = all.iter().fold(Vec::new(), |mut seen, m| {
        if !seen.contains(&m.mode.as_str()) {
            seen.push(&m.mode);
        }
        seen
    });
    for m in all {
        let mode = mode_order.iter().position(|x| *x == m.mode).unwrap_or(0);
        groups
            .entry((m.services, m.path.as_str(), mode))
            .or_default()
            .push(m);
    }
    groups
        .into_iter()
        .map(|((services, path, mode), ms)| Row {
            services,
            path: path.into(),
            mode: mode_order[mode].into(),
            reps: ms.len(),
            conns_per_sec: median(ms.iter().map(|m| m.report.conns_per_sec)),
            p50_us: median(ms.iter().map(|m| m.report.p50_us as f64)),
            p99_us: median(ms.iter().map(|m| m.report.p99_us as f64)),
            errors: ms.iter().map(|m| m.report.errors).sum(),
        })
        .collect()
}

/// Median (the mean of the middle two for an even count); 0 for none.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn find<'a>(rows: &'a [Row], services: usize, path: &str, mode: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.services == services && r.path == path && r.mode == mode)
}

/// The summary as a table, with each mode's connection rate relative to iptables' at the same
/// service count and path.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:>8}  {:<9}  {:<15}  {:>8}  {:>10}  {:>7}  {:>7}  {:>6}\n",
        "services", "path", "mode", "conn/s", "x iptables", "p50 us", "p99 us", "errors"
    );
    for r in rows {
        let vs = find(rows, r.services, &r.path, "iptables")
            .filter(|base| base.conns_per_sec > 0.0)
            .map_or("-".to_string(), |base| {
                format!("{:.2}", r.conns_per_sec / base.conns_per_sec)
            });
        let _ = writeln!(
            out,
            "{:>8}  {:<9}  {:<15}  {:>8.0}  {:>10}  {:>7.0}  {:>7.0}  {:>6}",
            r.services, r.path, r.mode, r.conns_per_sec, vs, r.p50_us, r.p99_us, r.errors
        );
    }
    out
}

/// The targets for lb at the largest service count measured: at least 1.5 times
/// iptables' connection rate, and within 5% of lb's own rate at the smallest count. Each is the
/// median of ratios taken within a round (runs minutes apart, not a whole benchmark apart, which
/// matters on a shared machine), with the rounds' range beside it.
pub fn targets(all: &[Measurement]) -> String {
    let (Some(min), Some(max)) = (
        all.iter().map(|m| m.services).min(),
        all.iter().map(|m| m.services).max(),
    ) else {
        return String::new();
    };
    let mut out = String::new();
    let socket = paired_ratios(
        all,
        (max, "lb-socket", "clusterip"),
        (max, "lb-socket", "direct"),
    );
    if let Some((median, lo, hi)) = spread(&socket) {
        let _ = writeln!(
            out,
            "clusterip: lb-socket / direct pod-to-pod at {max} services: {median:.2}x (rounds \
             {lo:.2}-{hi:.2}; target >= 0.97x): {}",
            verdict(median >= 0.97)
        );
    }
    for path in ["clusterip", "nodeport"] {
        let vs_iptables = paired_ratios(all, (max, "lb", path), (max, "iptables", path));
        if let Some((median, lo, hi)) = spread(&vs_iptables) {
            let _ = writeln!(
                out,
                "{path}: lb / iptables at {max} services: {median:.2}x (rounds {lo:.2}-{hi:.2}; \
                 target >= 1.50x): {}",
                verdict(median >= 1.5)
            );
        }
        let vs_min = paired_ratios(all, (max, "lb", path), (min, "lb", path));
        if let Some((median, lo, hi)) = spread(&vs_min).filter(|_| min < max) {
            let pct = |r: f64| (r - 1.0) * 100.0;
            let _ = writeln!(
                out,
                "{path}: lb at {max} vs {min} services: {:+.1}% (rounds {:+.0}%..{:+.0}%; \
                 target within 5%): {}",
                pct(median),
                pct(lo),
                pct(hi),
                verdict(pct(median).abs() <= 5.0)
            );
        }
    }
    out
}

/// Per round (repetition) in which both were measured: a's connection rate / b's, each given as
/// (services, mode, path).
fn paired_ratios(all: &[Measurement], a: (usize, &str, &str), b: (usize, &str, &str)) -> Vec<f64> {
    let rate = |(services, mode, path): (usize, &str, &str), rep: usize| {
        all.iter()
            .find(|m| m.services == services && m.mode == mode && m.path == path && m.rep == rep)
            .map(|m| m.report.conns_per_sec)
    };
    let mut reps: Vec<usize> = all.iter().map(|m| m.rep).collect();
    reps.sort_unstable();
    reps.dedup();
    reps.into_iter()
        .filter_map(|rep| Some(rate(a, rep)? / rate(b, rep)?))
        .filter(|r| r.is_finite())
        .collect()
}

/// (median, min, max), or None for no values.
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let lo = values.iter().copied().reduce(f64::min)?;
    let hi = values.iter().copied().reduce(f64::max)?;
    Some((median(values.iter().copied()), lo, hi))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The 1-minute load average (0 if unreadable).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The results directory: measurements are appended as they are taken, so an interrupted run
/// keeps what it measured.
pub struct Output {
    dir: PathBuf,
    runs: File,
}

impl Output {
    pub fn create(dir: &Path) -> Result<Output> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("e2e-runs.jsonl");
        let runs = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Output {
            dir: dir.to_path_buf(),
            runs,
        })
    }

    pub fn record(&mut self, m: &Measurement) -> Result<()> {
        let line = serde_json::to_string(m)?;
        writeln!(self.runs, "{line}").context("writing e2e-runs.jsonl")
    }

    /// Writes `e2e-summary.csv` and `e2e-meta.json`; returns the paths written.
    pub fn finish(&self, rows: &[Row], meta: &serde_json::Value) -> Result<Vec<PathBuf>> {
        let mut csv = String::from("services,path,mode,reps,conns_per_sec,p50_us,p99_us,errors\n");
        for r in rows {
            let _ = writeln!(
                csv,
                "{},{},{},{},{:.1},{:.0},{:.0},{}",
                r.services, r.path, r.mode, r.reps, r.conns_per_sec, r.p50_us, r.p99_us, r.errors
            );
        }
        let files = [
            (self.dir.join("e2e-summary.csv"), csv),
            (
                self.dir.join("e2e-meta.json"),
                serde_json::to_string_pretty(meta)?,
            ),
        ];
        for (path, text) in &files {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        let chart = self.dir.join(CHART);
        write_chart(rows, &chart)?;
        let mut paths = vec![self.dir.join("e2e-runs.jsonl")];
        paths.extend(files.into_iter().map(|(p, _)| p));
        paths.push(chart);
        Ok(paths)
    }
}

/// The chart's file name in a results directory.
pub const CHART: &str = "e2e-conns.svg";

/// Connections/s against the number of services, a line per mode, ClusterIP and NodePort side
/// by side.
pub fn write_chart(rows: &[Row], path: &Path) -> Result<()> {
    let panel = |route: &str, title: &str| {
        let points = rows
            .iter()
            .filter(|r| r.path == route)
            .map(|r| (r.mode.clone(), (r.services as f64, r.conns_per_sec)));
        Panel {
            title: title.to_string(),
            x_desc: "services (5 endpoints each)",
            y_desc: "connections/s",
            log_y: false,
            series: charts::series_by_label(points),
        }
    };
    let panels = [
        panel("clusterip", "ClusterIP, from a pod"),
        panel("nodeport", "NodePort, from outside"),
    ];
    charts::write_svg(path, &panels)
}

/// The measurements of a results directory's `e2e-runs.jsonl`.
pub fn read_runs(dir: &Path) -> Result<Vec<Measurement>> {
    let path = dir.join("e2e-runs.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: {l}", path.display())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(services: usize, mode: &str, path: &str, cps: f64) -> Measurement {
        Measurement {
            services,
            mode: mode.into(),
            path: path.into(),
            rep: 0,
            conns: 4,
            closer: Closer::Server,
            program_secs: 0.1,
            load_avg_1m: 0.5,
            unix_time: 0,
            report: LoadReport {
                completed: cps as u64,
                errors: 0,
                secs: 1.0,
                conns_per_sec: cps,
                p50_us: 100,
                p99_us: 300,
            },
        }
    }

    #[test]
    fn medians_per_group() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        let rows = summarize(&[
            m(1, "lb", "nodeport", 10.0),
            m(1, "iptables", "nodeport", 5.0),
            m(1, "lb", "nodeport", 30.0),
            m(1, "lb", "nodeport", 20.0),
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].mode.as_str(), rows[0].reps), ("lb", 3));
        assert_eq!(rows[0].conns_per_sec, 20.0);
        assert!(
            table(&rows).contains("4.00"),
            "lb at 4x iptables:\n{}",
            table(&rows)
        );
    }

    #[test]
    fn targets_compare_within_rounds() {
        let mut all = Vec::new();
        // Round 1 ran on a busy machine: everything at half speed.
        for (rep, speed) in [(0, 1.0), (1, 0.5), (2, 1.0)] {
            for (services, mode, path, cps) in [
                (1, "lb", "clusterip", 100.0),
                (10, "lb", "clusterip", 97.0),
                (10, "iptables", "clusterip", 50.0),
                (1, "lb", "nodeport", 100.0),
                (10, "lb", "nodeport", 90.0),
                (10, "iptables", "nodeport", 80.0),
                (10, "lb-socket", "clusterip", 96.0),
                (10, "lb-socket", "direct", 100.0),
            ] {
                let mut m = m(services, mode, path, cps * speed);
                m.rep = rep;
                all.push(m);
            }
        }
        let text = targets(&all);
        assert!(
            text.contains("clusterip: lb / iptables at 10 services: 1.94x (rounds 1.94-1.94; target >= 1.50x): met"),
            "{text}"
        );
        assert!(text.contains(
            "clusterip: lb at 10 vs 1 services: -3.0% (rounds -3%..-3%; target within 5%): met"
        ));
        assert!(text.contains("nodeport: lb / iptables at 10 services: 1.12x"));
        assert!(
            text.contains("lb-socket / direct pod-to-pod at 10 services: 0.96x (rounds 0.96-0.96; target >= 0.97x): MISSED"),
            "{text}"
        );
        assert!(text.contains("): MISSED\nnodeport: lb at 10 vs 1 services: -10.0%"));
    }

    #[test]
    fn measurements_are_flat_json_lines() {
        let line = serde_json::to_string(&m(1000, "nftables", "clusterip", 1.5)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["services"], 1000);
        assert_eq!(v["conns_per_sec"], 1.5);
        assert_eq!(v["p99_us"], 300);
    }
}
