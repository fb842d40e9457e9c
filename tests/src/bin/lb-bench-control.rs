//! Control-plane cost for N ClusterIP services of 10 endpoints each:
//! - in process, the agent's pipeline from a changed view of the cluster to written maps, as
//!   the agent runs it: from cold, `Tracker::update` from nothing then `Reconciler::apply` on
//!   real pinned maps; for one endpoint changed (p50/p99 over 100 changes), `Tracker::update`
//!   then `Reconciler::apply_changes`;
//! - the real `lb-agent` in manifests mode, in a lab namespace, started on a manifest of the N
//!   services: wall time until its first "maps updated" log line (process start, map creation,
//!   YAML parsing, model, writes), its peak RSS and CPU time by then;
//! - the agent's periodic drift check at N: re-reading the maps (`Reconciler::resync`, which
//!   finds nothing changed), the median of 5;
//! - kube-proxy's iptables and nftables modes programming the same services, from cold and per
//!   endpoint change (src/bench_control.rs); `--modes lb` leaves them out (lb's figures in
//!   minutes).
//!
//! The latencies of all three go to `--out` as `control-summary.csv` and `control-latency.svg`.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use lb::{
    dataplane::{cleanup, reconcile::Reconciler, Capacities, Dataplane, Options},
    model::{NodeContext, ObjectRef, Objects, Tracker},
};
use lb_tests::{
    bench_control::{
        self, changed_service, cluster_ip, endpoint_ips, ms, Limits, Row, CHANGES, ENDPOINTS,
    },
    lab::{poll_until, Lab},
    topology::agent_bin,
};

#[derive(Parser)]
#[command(about = "Control-plane benchmark: lb vs kube-proxy's iptables and nftables modes")]
struct Args {
    /// Numbers of services, comma-separated.
    #[arg(default_value = "1000,10000,50000", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Where control-summary.csv and control-latency.svg go.
    #[arg(long, default_value = "target/bench/control")]
    out: PathBuf,
    /// One `nft -f` transaction of the whole ruleset is killed after this many seconds.
    #[arg(long, default_value_t = 120)]
    nft_transaction_limit_secs: u64,
    /// The endpoint changes of one system at one size stop after this many seconds.
    #[arg(long, default_value_t = 120)]
    changes_limit_secs: u64,
    /// Measure nothing: draw the chart again from OUT/control-summary.csv.
    #[arg(long)]
    redraw: bool,
    /// What to measure: lb (in process and the agent) and kube-proxy's modes, or lb alone.
    #[arg(long, value_enum, default_value_t = Modes::All)]
    modes: Modes,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Modes {
    All,
    Lb,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.redraw {
        let rows = bench_control::read_summary(&args.out)?;
        return bench_control::write_chart(&rows, &args.out.join(bench_control::CHART));
    }
    let limits = Limits {
        nft_transaction: Duration::from_secs(args.nft_transaction_limit_secs),
        changes: Duration::from_secs(args.changes_limit_secs),
    };
    let mut rows = Vec::new();
    println!("control plane: N ClusterIP services x {ENDPOINTS} endpoints");
    println!(
        "{:>7} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>8} {:>8}",
        "N",
        "cold ms",
        "model ms",
        "apply ms",
        "chg p50",
        "chg p99",
        "resync ms",
        "agent ms",
        "RSS MiB",
        "CPU s"
    );
    for &n in &args.sizes {
        let pin = PathBuf::from(format!("/sys/fs/bpf/lb-bench-ctl-{}", std::process::id()));
        let result = bench(&pin, n);
        cleanup(&pin).context("removing the bench's pins")?;
        let r = result?;
        let a = agent_cold(n)?;
        let [lb, agent] = lb_rows(n, &r, &a);
        let opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
        println!(
            "{n:>7} | {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>9.1} | {:>9.0} {:>8.1} {:>8.2}",
            ms(r.cold_model + r.cold_apply),
            ms(r.cold_model),
            ms(r.cold_apply),
            opt(lb.change_p50_ms),
            opt(lb.change_p99_ms),
            ms(r.resync),
            ms(a.ready),
            a.peak_rss_kib as f64 / 1024.0,
            a.cpu.as_secs_f64()
        );
        rows.extend([lb, agent]);
        if args.modes == Modes::All {
            rows.extend(bench_control::kube_proxy(n, limits)?);
        }
        // After each size, so that a failure later keeps what was measured.
        bench_control::write_results(&args.out, &rows)?;
    }
    println!(
        "columns: in-process cold (model + apply), one-endpoint change and drift check \
         (resync: re-read the maps, nothing changed); real agent cold"
    );
    print_latencies(&rows);
    println!("results: {}", args.out.display());
    let sizes: Vec<String> = args.sizes.iter().map(usize::to_string).collect();
    let modes = if args.modes == Modes::Lb {
        " --modes lb"
    } else {
        ""
    };
    println!(
        "command: cargo xtask bench control {}{modes}",
        sizes.join(",")
    );
    Ok(())
}

/// lb's latencies as rows of the results: in process, and the real agent from cold.
fn lb_rows(n: usize, run: &Run, agent: &AgentRun) -> [Row; 2] {
    let mut lb = Row::new(n, "lb");
    lb.cold_ms = Some(ms(run.cold_model + run.cold_apply));
    lb.set_changes(run.changes.clone());
    lb.note = "in process: model + map writes".into();
    let mut real = Row::new(n, "lb-agent");
    real.cold_ms = Some(ms(agent.ready));
    real.note = "process start to maps written".into();
    [lb, real]
}

/// The second table: every system's programming latency, by size.
fn print_latencies(rows: &[Row]) {
    let line = |c: &[String]| {
        println!(
            "{:>7} | {:<13} {:>11} {:>9} {:>9} {:>7} {:>5} | {}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        )
    };
    println!();
    line(&bench_control::COLUMNS.map(|c| c.replace("_ms", "").replace("_avg_1m", "")));
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| r.services);
    for r in sorted {
        line(&r.cells(2, "-"));
    }
}

struct Run {
    cold_model: Duration,
    cold_apply: Duration,
    changes: Vec<Duration>,
    /// The drift check's median.
    resync: Duration,
}

fn bench(pin: &std::path::Path, n: usize) -> Result<Run> {
    let mut objects = cluster(n)?;
    let node = NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec![Ipv4Addr::new(192, 0, 2, 10)],
    };
    let mut dp = Dataplane::open(&Options {
        pin_path: pin.to_path_buf(),
        ..Default::default()
    })?;
    let caps = Capacities::read(dp.layout())?;
    let mut rec = Reconciler::adopt(&dp.maps, caps)?;
    let mut tracker = Tracker::default();
    let t = Instant::now();
    tracker.update(&Objects::default(), &objects, &node);
    let cold_model = t.elapsed();
    let report = rec.apply(&mut dp.maps, tracker.desired());
    let cold_apply = t.elapsed() - cold_model;
    anyhow::ensure!(
        report.errors.is_empty() && report.refused.is_empty(),
        "cold apply: {:?} {:?}",
        report.errors,
        report.refused
    );
    let mut changes = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        // The agent keeps the previous snapshot behind an Arc: this copy is not its cost.
        let previous = objects.clone();
        move_endpoint(&mut objects, changed_service(i, n), i)?;
        let t = Instant::now();
        let changed = tracker.update(&previous, &objects, &node);
        let report = rec.apply_changes(&mut dp.maps, tracker.desired(), &changed);
        changes.push(t.elapsed());
        anyhow::ensure!(report.writes() > 0, "change {i} wrote nothing");
    }
    let mut resyncs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let drift = rec.resync(&dp.maps)?;
        resyncs.push(t.elapsed());
        anyhow::ensure!(!drift, "the maps drifted from what was written");
    }
    resyncs.sort();
    Ok(Run {
        cold_model,
        cold_apply,
        changes,
        resync: resyncs[resyncs.len() / 2],
    })
}

fn cluster(n: usize) -> Result<Objects> {
    let mut objects = Objects::default();
    for i in 0..n {
        let name = format!("svc-{i}");
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {
                "clusterIP": cluster_ip(i).to_string(),
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            },
        }))?;
        objects
            .services
            .insert(ObjectRef::new("bench", &name), Arc::new(svc));
        let slice = endpoint_slice(&name, &endpoint_ips(i, None))?;
        objects.slices.insert(
            ObjectRef::new("bench", &format!("{name}-1")),
            Arc::new(slice),
        );
    }
    Ok(objects)
}

/// Endpoints of even index are on node-a, this node.
fn endpoint_slice(service: &str, endpoints: &[Ipv4Addr]) -> Result<EndpointSlice> {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .enumerate()
        .map(|(j, ip)| {
            let node = if j % 2 == 0 { "node-a" } else { "node-b" };
            serde_json::json!({"addresses": [ip.to_string()], "nodeName": node})
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{service}-1"),
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": eps,
    }))?)
}

/// Replace endpoint 0 of service `i` with a new address (as a pod restarting elsewhere).
fn move_endpoint(objects: &mut Objects, i: usize, round: usize) -> Result<()> {
    let name = format!("svc-{i}");
    let slice = endpoint_slice(&name, &endpoint_ips(i, Some(round)))?;
    objects.slices.insert(
        ObjectRef::new("bench", &format!("{name}-1")),
        Arc::new(slice),
    );
    Ok(())
}

struct AgentRun {
    ready: Duration,
    peak_rss_kib: u64,
    cpu: Duration,
}

/// The real agent from cold on a manifest of `n` services, in a namespace of its own (no
/// interfaces to attach: only the control plane is measured).
fn agent_cold(n: usize) -> Result<AgentRun> {
    let lab = Lab::new("bench-control")?;
    let node = lab.netns("node")?;
    let manifest = lab.log_dir().join("services.yaml");
    std::fs::write(&manifest, manifest_yaml(&cluster(n)?)?)?;
    let pin = lab.pin_path("node");
    let args = [
        "run",
        "--node-name",
        "node-a",
        "--manifests",
        manifest.to_str().context("path")?,
        "--pin-path",
        pin.to_str().context("path")?,
    ];
    let started = Instant::now();
    let agent = node.spawn("agent", agent_bin()?, args)?;
    // The first update after start programs everything.
    poll_until(Duration::from_secs(300), || {
        agent.stderr().contains("maps updated").then_some(())
    })
    .with_context(|| format!("agent never programmed {n} services:\n{}", agent.stderr()))?;
    let ready = started.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    Ok(AgentRun {
        ready,
        peak_rss_kib,
        cpu: cpu_time(agent.pid())?,
    })
}

/// User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15).
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// The objects as one multi-document manifest (JSON documents are YAML).
fn manifest_yaml(objects: &Objects) -> Result<String> {
    let mut out = String::new();
    let docs = objects
        .services
        .values()
        .map(|s| typed(&**s, "v1", "Service"))
        .chain(
            objects
                .slices
                .values()
                .map(|s| typed(&**s, "discovery.k8s.io/v1", "EndpointSlice")),
        );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string(&doc?)?);
        out.push('\n');
    }
    Ok(out)
}

fn typed(obj: &impl serde::Serialize, api_version: &str, kind: &str) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(obj)?;
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    Ok(v)
}
