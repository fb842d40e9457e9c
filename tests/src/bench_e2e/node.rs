//! One benchmark lab, built fresh for every run so that no mode inherits another's state (a
//! conntrack table, netfilter hooks that stay registered, pinned maps):
//!
//! ```text
//!  client 192.0.2.100 ── eth1 192.0.2.1 ┐ node ┌ h1..h5 ── pods p1..p5 10.244.1.11-15 (servers)
//!                                       │      └ hc ────── client pod 10.244.1.100
//! ```
//! NodePorts are measured from the client, the ClusterIP from the client pod. Pods are routed
//! /32s behind host-side veths, as Calico does it.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::traffic::{self, Closer, LoadOptions, LoadReport};
use super::Mode;
use crate::lab::{poll_until, ChildGuard, Lab, Netns};
use crate::topology::{agent_bin, client, pod};

/// The node's name in the manifests: endpoints with it are local.
pub const NODE: &str = "bench-node";
pub const NODE_IP: &str = "192.0.2.1";
const CLIENT_CIDR: &str = "192.0.2.100/24";
const CLIENT_POD: (&str, &str, &str) = ("cpod", "10.244.1.100", "hc");
pub const PODS: [(&str, &str, &str); 5] = [
    ("p1", "10.244.1.11", "h1"),
    ("p2", "10.244.1.12", "h2"),
    ("p3", "10.244.1.13", "h3"),
    ("p4", "10.244.1.14", "h4"),
    ("p5", "10.244.1.15", "h5"),
];
/// How long a mode may take to program 10,000 services.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);

/// The pods' addresses, the measured service's endpoints.
pub fn pod_ips() -> Vec<Ipv4Addr> {
    PODS.iter().map(|p| p.1.parse().expect("pod IP")).collect()
}

/// What a mode programs, generated once per service count.
pub struct Programs {
    pub iptables: String,
    /// `nft -f` transactions, loaded in order.
    pub nft: Vec<String>,
    pub manifests: Vec<(String, String)>,
}

pub struct BenchLab {
    // Field order is drop order: processes before the lab that owns their namespaces.
    agent: Option<ChildGuard>,
    _servers: Vec<ChildGuard>,
    closer: Closer,
    pub client: Netns,
    pub client_pod: Netns,
    pub node: Netns,
    bin: PathBuf,
    pub lab: Lab,
}

impl BenchLab {
    /// Builds the topology and starts `bin serve` with `server_threads` in every pod.
    pub fn build(bin: &Path, server_threads: usize, closer: Closer) -> Result<BenchLab> {
        let lab = Lab::new("bench-e2e")?;
        let node = lab.netns("node")?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        let mut servers = Vec::new();
        for (name, ip, host_if) in PODS {
            let ns = pod(&lab, &node, name, ip, host_if)?;
            servers.push(start_server(&ns, bin, server_threads, closer)?);
        }
        let (name, ip, host_if) = CLIENT_POD;
        let client_pod = pod(&lab, &node, name, ip, host_if)?;
        let client = client(&lab, &node, "eth1", &format!("{NODE_IP}/24"), CLIENT_CIDR)?;
        for ns in [&client, &client_pod] {
            tune_client(ns)?;
        }
        // lb's TC program sends replies to the client's address itself (bpf_redirect_neigh),
        // which needs the neighbour resolved, as it is on a busy node; every mode gets the same.
        node.exec("ping", ["-c1", "-W2", "192.0.2.100"])
            .context("node reaches the client")?;
        Ok(BenchLab {
            agent: None,
            _servers: servers,
            closer,
            client,
            client_pod,
            node,
            bin: bin.to_path_buf(),
            lab,
        })
    }

    /// Programs `mode` for the services in `programs` and waits until `probes` (from the client
    /// pod, from the client) are answered; returns how long programming took.
    pub fn program(
        &mut self,
        mode: Mode,
        programs: &Programs,
        xdp_mode: &str,
        probes: [SocketAddr; 2],
    ) -> Result<Duration> {
        let start = Instant::now();
        match mode {
            Mode::Lb => self.start_agent(&programs.manifests, xdp_mode, "host")?,
            Mode::LbSocket => self.start_agent(&programs.manifests, xdp_mode, "all")?,
            Mode::Iptables | Mode::IptablesLegacy => {
                // kube-proxy sets it to serve NodePorts on localhost (its default).
                self.node.sysctl("net.ipv4.conf.all.route_localnet", "1")?;
                let file = self.write("iptables.rules", &programs.iptables)?;
                let restore = match mode {
                    Mode::Iptables => "iptables-nft-restore",
                    _ => "iptables-legacy-restore",
                };
                run_long(&self.node, restore, &[file.as_str()])?;
            }
            Mode::Nftables => {
                for (i, batch) in programs.nft.iter().enumerate() {
                    let file = self.write(&format!("kube-proxy-{i:03}.nft"), batch)?;
                    run_long(&self.node, "nft", &["-f", file.as_str()])?;
                }
            }
        }
        self.wait_answered(probes, mode)?;
        Ok(start.elapsed())
    }

    /// Runs `bin load` against `addrs` from `from` (`in_cgroup`: in the lab's cgroup, where the
    /// agent's socket hooks act) and returns its report.
    pub fn load(
        &self,
        from: &Netns,
        addrs: &[SocketAddr],
        opts: &LoadOptions,
        in_cgroup: bool,
    ) -> Result<LoadReport> {
        let addr: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        let addr = addr.join(",");
        let args = [
            "load".to_string(),
            "--addr".into(),
            addr.clone(),
            "--conns".into(),
            opts.conns.to_string(),
            "--warmup-ms".into(),
            opts.warmup.as_millis().to_string(),
            "--secs".into(),
            opts.duration.as_secs_f64().to_string(),
            "--closer".into(),
            closer_arg(opts.closer).into(),
        ];
        let mut cmd = match in_cgroup {
            true => from.command_in_cgroup(&self.bin)?,
            false => from.command(&self.bin),
        };
        cmd.args(&args);
        let mut child = from.spawn_command(&format!("load-{addr}"), cmd)?;
        let deadline = opts.warmup + opts.duration + Duration::from_secs(30);
        match child.wait_timeout(deadline)? {
            Some(status) if status.success() => {}
            other => bail!("load against {addr} ended {other:?}: {}", child.stderr()),
        }
        let out = child.stdout();
        let line = out.lines().last().context("load printed nothing")?;
        serde_json::from_str(line).with_context(|| format!("load output {line:?}"))
    }

    fn start_agent(
        &mut self,
        manifests: &[(String, String)],
        xdp_mode: &str,
        socket_lb: &str,
    ) -> Result<()> {
        let dir = self.lab.log_dir().join("manifests");
        std::fs::create_dir_all(&dir).context("manifest dir")?;
        for (name, text) in manifests {
            std::fs::write(dir.join(name), text).context("writing manifests")?;
        }
        let pin = self.lab.pin_path("node");
        let args = [
            "run",
            "--node-name",
            NODE,
            "--manifests",
            dir.to_str().context("manifest path")?,
            "--ext-iface",
            "eth1",
            "--pod-iface",
            "h*",
            "--xdp-mode",
            xdp_mode,
            "--socket-lb",
            socket_lb,
            "--pin-path",
            pin.to_str().context("pin path")?,
        ];
        let agent = self.node.spawn("lb-agent", agent_bin()?, args)?;
        // The first sync programs the whole snapshot at once.
        let synced = poll_until(PROGRAM_TIMEOUT, || {
            agent.stderr().contains("maps updated").then_some(())
        });
        if synced.is_none() {
            bail!("lb-agent did not program the maps: {}", agent.stderr());
        }
        // Measure the steady state, not the tail of the agent's start (at 10,000 services it
        // keeps a CPU busy for a while after the first sync): wait until it idles.
        let idle = poll_until(PROGRAM_TIMEOUT, || {
            (cpu_ticks_in(agent.pid(), IDLE_WINDOW)? <= 1).then_some(())
        });
        if idle.is_none() {
            bail!("lb-agent never went idle: {}", agent.stderr());
        }
        self.agent = Some(agent);
        Ok(())
    }

    fn wait_answered(&self, probes: [SocketAddr; 2], mode: Mode) -> Result<()> {
        for (from, addr) in [(&self.client_pod, probes[0]), (&self.client, probes[1])] {
            let answered = poll_until(Duration::from_secs(10), || {
                from.in_netns(|| traffic::connection(addr, self.closer))
                    .ok()?
                    .ok()
            });
            if answered.is_none() {
                let agent = self.agent.as_ref().map(ChildGuard::stderr);
                bail!(
                    "{mode}: {addr} not answered from {}; agent: {agent:?}",
                    from.name()
                );
            }
        }
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> Result<String> {
        let path = self.lab.log_dir().join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_str().context("log path")?.to_string())
    }
}

fn start_server(ns: &Netns, bin: &Path, threads: usize, closer: Closer) -> Result<ChildGuard> {
    let port = super::services::TARGET_PORT.to_string();
    let threads = threads.to_string();
    let closer = closer_arg(closer);
    let args = [
        "serve",
        "--port",
        &port,
        "--threads",
        &threads,
        "--closer",
        closer,
    ];
    let mut server = ns.spawn("server", bin, args)?;
    let ready = poll_until(Duration::from_secs(10), || {
        if server.stdout().contains(traffic::READY) {
            return Some(true);
        }
        matches!(server.try_wait(), Ok(Some(_))).then_some(false)
    });
    if ready != Some(true) {
        bail!("server in {} not ready: {}", ns.name(), server.stderr());
    }
    Ok(server)
}

/// How long the agent must stay (nearly) idle before measuring.
const IDLE_WINDOW: Duration = Duration::from_millis(500);

/// CPU time (user + system, in clock ticks of 10 ms) `pid` used during the next `window`; None
/// if it is gone.
fn cpu_ticks_in(pid: u32, window: Duration) -> Option<u64> {
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command (which may hold spaces), from field 3 on: utime and stime are
        // fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let before = ticks()?;
    std::thread::sleep(window);
    Some(ticks()?.saturating_sub(before))
}

/// `--closer` as the subcommands take it.
fn closer_arg(closer: Closer) -> &'static str {
    match closer {
        Closer::Server => "server",
        Closer::Client => "client",
    }
}

/// The whole port range and TIME_WAIT reuse, so that ports never limit the connection rate.
fn tune_client(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1")
}

/// Runs a command that may take longer than `Netns::exec` allows (loading 10,000 services).
fn run_long(ns: &Netns, program: &str, args: &[&str]) -> Result<()> {
    let mut child = ns.spawn(program, program, args)?;
    match child.wait_timeout(PROGRAM_TIMEOUT)? {
        Some(status) if status.success() => Ok(()),
        other => bail!(
            "{program} {args:?} in {} ended {other:?}: {}",
            ns.name(),
            child.stderr()
        ),
    }
}
