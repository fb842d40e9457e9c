//! `lb-bench-e2e`: end-to-end comparison of lb with kube-proxy's iptables and nftables rulesets
//! (`cargo xtask bench e2e`; method in docs/bench/README.md).
//!
//! ```text
//! lb-bench-e2e run [--services 1,1000,10000] [--modes lb,lb-socket,iptables,nftables] ...
//!     Builds the lab per run, measures, prints a table and writes results to --out.
//! lb-bench-e2e serve --port PORT --threads N      (in the pods; started by `run`)
//! lb-bench-e2e load --addr IP:PORT[,..] --conns N ...  (in the clients; one JSON line)
//! lb-bench-e2e chart DIR                          (DIR/e2e-conns.svg from DIR/e2e-runs.jsonl)
//! ```
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use lb_tests::bench_e2e::{
    self, node, report, services::ServiceSet, traffic, Closer, LoadOptions, Mode, Plan,
};

#[derive(Parser)]
#[command(about = "End-to-end TCP benchmark: lb vs kube-proxy's iptables and nftables rulesets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark (as root).
    Run(RunArgs),
    /// Draw the chart of a results directory again (DIR/e2e-runs.jsonl -> DIR/e2e-conns.svg).
    Chart { dir: PathBuf },
    /// Answer requests on PORT (runs in the lab's pods).
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, value_enum, default_value_t = Closer::Client)]
        closer: Closer,
    },
    /// Print what a mode programs for N services: the iptables-restore input, the nft script
    /// (its transactions concatenated) or lb-agent's manifests (its files concatenated).
    Rules {
        #[arg(long)]
        services: usize,
        #[arg(long)]
        mode: String,
    },
    /// Open connections to ADDR in closed loops and print a JSON report (runs in the clients).
    Load {
        /// Comma-separated: the connection loops take them in turn.
        #[arg(long, value_delimiter = ',', required = true)]
        addr: Vec<SocketAddr>,
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        warmup_ms: u64,
        #[arg(long)]
        secs: f64,
        #[arg(long, value_enum, default_value_t = Closer::Client)]
        closer: Closer,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Service counts (each service has 5 endpoints).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<usize>,
    /// Modes, run in turn: lb, lb-socket (`--socket-lb all`, measured beside the direct
    /// pod-to-pod rate), iptables (iptables-nft), iptables-legacy, nftables.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lb,lb-socket,iptables,nftables"
    )]
    modes: Vec<String>,
    /// Repetitions of every (services, mode); the summary takes the median.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Measured seconds per path and run.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Unmeasured warm-up per path and run.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Concurrent connection loops of the client.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Which side closes each connection first (and so holds its TIME_WAIT).
    #[arg(long, value_enum, default_value_t = Closer::Client)]
    closer: Closer,
    /// Accepting threads per pod server. As many as the client's loops: a Service's random
    /// spread sometimes sends every loop to one pod, and a pod short of threads would then
    /// queue them (a wait the direct path's spread meets alike, but neither should measure).
    #[arg(long, default_value_t = 4)]
    server_threads: usize,
    /// lb-agent's --xdp-mode. Generic by default: native XDP on a veth (the lab's stand-in for
    /// a NIC) copies every frame a TCP stack sends (a clone) into a page-pool buffer and passes
    /// it through the veth's own NAPI, costs driver XDP on a physical NIC does not have
    /// (docs/bench/README.md).
    #[arg(long, default_value = "generic")]
    xdp_mode: String,
    /// Where e2e-runs.jsonl, e2e-summary.csv and e2e-meta.json go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(&args),
        Command::Chart { dir } => {
            let rows = report::summarize(&report::read_runs(&dir)?);
            report::write_chart(&rows, &dir.join(report::CHART))
        }
        Command::Serve {
            port,
            threads,
            closer,
        } => {
            let listener = traffic::listen(port).with_context(|| format!("listening on {port}"))?;
            println!("{}", traffic::READY);
            traffic::serve(&listener, threads, closer).context("serving")
        }
        Command::Rules { services, mode } => {
            let programs = bench_e2e::programs(&ServiceSet::new(services, &node::pod_ips()));
            match Mode::parse(&mode)? {
                Mode::Lb | Mode::LbSocket => {
                    programs.manifests.iter().for_each(|(_, t)| print!("{t}"))
                }
                Mode::Iptables | Mode::IptablesLegacy => print!("{}", programs.iptables),
                Mode::Nftables => print!("{}", programs.nft.concat()),
            }
            Ok(())
        }
        Command::Load {
            addr,
            conns,
            warmup_ms,
            secs,
            closer,
        } => {
            let opts = LoadOptions {
                conns,
                warmup: Duration::from_millis(warmup_ms),
                duration: Duration::from_secs_f64(secs),
                closer,
            };
            let report = traffic::load(&addr, &opts);
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

fn run(args: &RunArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark builds network namespaces and loads BPF programs: run it as root");
    }
    let plan = Plan {
        services: args.services.clone(),
        modes: args
            .modes
            .iter()
            .map(|m| Mode::parse(m))
            .collect::<Result<_>>()?,
        reps: args.reps,
        load: LoadOptions {
            conns: args.conns,
            warmup: Duration::from_millis(args.warmup_ms),
            duration: Duration::from_secs_f64(args.secs),
            closer: args.closer,
        },
        server_threads: args.server_threads,
        xdp_mode: args.xdp_mode.clone(),
    };
    let bin = std::env::current_exe().context("current_exe")?;
    let mut out = report::Output::create(&args.out)?;
    let load_before = report::load_average();
    let all = bench_e2e::run(&plan, &bin, &mut out)?;
    let rows = report::summarize(&all);
    println!("\n{}", report::table(&rows));
    print!("{}", report::targets(&all));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let meta = serde_json::json!({
        "command": command,
        "plan": format!("{plan:?}"),
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": report::load_average(),
        "iptables": version("iptables"),
        "nft": version("nft"),
        "finished_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    for path in out.finish(&rows, &meta)? {
        println!("wrote {}", path.display());
    }
    println!("command: {command}");
    Ok(())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn version(program: &str) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
