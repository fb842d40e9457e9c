//! End-to-end benchmark (`cargo xtask bench e2e`): TCP connections per second and connection
//! latency through a ClusterIP and a NodePort, for lb (per packet, and with socket-level load
//! balancing) and for kube-proxy's iptables and nftables rulesets, with 1 to 10,000 services of 5
//! endpoints on the node, beside the direct pod-to-pod rate. See docs/bench/README.md.
pub mod node;
pub mod report;
pub mod services;
pub mod traffic;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

use crate::kube_proxy;
use node::{BenchLab, Programs, NODE_IP};
use report::{Measurement, Output};
use services::ServiceSet;
pub use traffic::{Closer, LoadOptions};

/// Who does the service load balancing on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// lb-agent in manifests mode: XDP on the client-facing link, TC on the pods' links.
    Lb,
    /// The same with `--socket-lb all`: the client pod (in the lab's cgroup) is given a backend
    /// at connect() time, and its packets need no NAT.
    LbSocket,
    /// kube-proxy's iptables ruleset through iptables-nft (Debian 12's default `iptables`).
    Iptables,
    /// The same ruleset through the legacy (x_tables) backend.
    IptablesLegacy,
    /// kube-proxy's nftables ruleset.
    Nftables,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Lb,
        Mode::LbSocket,
        Mode::Iptables,
        Mode::IptablesLegacy,
        Mode::Nftables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Lb => "lb",
            Mode::LbSocket => "lb-socket",
            Mode::Iptables => "iptables",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::Nftables => "nftables",
        }
    }

    pub fn parse(name: &str) -> Result<Mode> {
        match Mode::ALL.into_iter().find(|m| m.name() == name) {
            Some(m) => Ok(m),
            None => {
                bail!("unknown mode {name:?} (lb, lb-socket, iptables, iptables-legacy, nftables)")
            }
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub services: Vec<usize>,
    pub modes: Vec<Mode>,
    pub reps: usize,
    pub load: LoadOptions,
    pub server_threads: usize,
    pub xdp_mode: String,
}

/// Runs the plan: `reps` rounds, each of every service count and every mode in turn, each run in
/// a fresh lab, so that a busy moment of the machine (it is shared) hits all of them alike rather
/// than one service count or mode; every measurement goes to `out` as it is taken.
pub fn run(plan: &Plan, bin: &Path, out: &mut Output) -> Result<Vec<Measurement>> {
    let sets: Vec<(ServiceSet, Programs)> = plan
        .services
        .iter()
        .map(|&n| {
            let set = ServiceSet::new(n, &node::pod_ips());
            let programs = programs(&set);
            (set, programs)
        })
        .collect();
    let mut all = Vec::new();
    for rep in 0..plan.reps {
        for (set, programs) in &sets {
            for &mode in &plan.modes {
                for m in run_one(plan, bin, set, programs, mode, rep)? {
                    eprintln!("{}", m.progress_line());
                    out.record(&m)?;
                    all.push(m);
                }
            }
        }
    }
    Ok(all)
}

/// Services per `nft -f` transaction (see [`kube_proxy::nft_batches`]): kube-proxy writes one
/// transaction, which at 10,000 services takes minutes to load here; the datapath is the same.
const NFT_SERVICES_PER_TRANSACTION: usize = 500;

/// What every mode programs for `set`.
pub fn programs(set: &ServiceSet) -> Programs {
    let node = kube_proxy::Node {
        cluster_cidr: "10.244.0.0/16".into(),
        service_cidr: "10.96.0.0/12".into(),
    };
    Programs {
        iptables: kube_proxy::iptables_restore(&set.services, &node),
        nft: kube_proxy::nft_batches(&set.services, &node, NFT_SERVICES_PER_TRANSACTION),
        manifests: set.manifests(node::NODE),
    }
}

/// One mode in a fresh lab: the ClusterIP from the client pod, then the NodePort from the client;
/// with socket-level load balancing also the direct pod-to-pod limit (the client pod to the
/// endpoints' own addresses), the rate a connect()-time translation can at best reach.
fn run_one(
    plan: &Plan,
    bin: &Path,
    set: &ServiceSet,
    programs: &Programs,
    mode: Mode,
    rep: usize,
) -> Result<Vec<Measurement>> {
    let svc = set.measured();
    let cluster_ip = SocketAddr::from((svc.cluster_ip, svc.port));
    let node_port = format!("{NODE_IP}:{}", svc.node_port.expect("measured NodePort")).parse()?;
    let mut lab = BenchLab::build(bin, plan.server_threads, plan.load.closer)?;
    let programmed = lab.program(mode, programs, &plan.xdp_mode, [cluster_ip, node_port])?;
    let socket = mode == Mode::LbSocket;
    let mut paths = vec![
        ("clusterip", &lab.client_pod, vec![cluster_ip], socket),
        ("nodeport", &lab.client, vec![node_port], false),
    ];
    if socket {
        // The same endpoints the Service spreads over, taken in turn by the connection loops.
        let pods = node::pod_ips().into_iter();
        let direct = pods.map(|ip| SocketAddr::from((ip, services::TARGET_PORT)));
        paths.push(("direct", &lab.client_pod, direct.collect(), false));
    }
    let mut out = Vec::new();
    for (path, from, addrs, in_cgroup) in paths {
        let load_avg = report::load_average();
        let report = lab.load(from, &addrs, &plan.load, in_cgroup)?;
        out.push(Measurement {
            services: set.services.len(),
            mode: mode.name().into(),
            path: path.into(),
            rep,
            conns: plan.load.conns,
            closer: plan.load.closer,
            program_secs: programmed.as_secs_f64(),
            load_avg_1m: load_avg,
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            report,
        });
    }
    Ok(out)
}
