//! `lb-agent run`: load (or adopt) the dataplane, attach it to the node's interfaces, and keep
//! the maps equal to what the source says until told to stop. Stopping leaves programs and maps
//! in place: traffic keeps flowing and the next agent adopts them.
mod attachments;
pub mod cli;
pub mod interfaces;
pub mod node_local;

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use ipnet::Ipv4Net;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    dataplane::{
        conntrack, reconcile::Reconciler, socket_lb, Capacities, Dataplane, Options, SocketLbMode,
        XdpRequest,
    },
    health::HealthServers,
    metrics::{self, Metrics},
    model::{NodeContext, Problem, Tracker},
    source::{self, manifests::Manifests, Snapshot},
};
use attachments::Attachments;

/// Expired flows are removed (and the conntrack table counted) this often.
const CT_COLLECT_INTERVAL: Duration = Duration::from_secs(30);

/// A full re-read of the maps this often repairs entries changed behind the agent's back.
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpMode {
    /// Per interface: native on network cards, generic on veth and other software devices.
    Auto,
    /// Native, generic where the driver has no native XDP (on veth, frames lb transmits are
    /// dropped unless the peer runs an XDP program).
    Native,
    Generic,
    Off,
}

impl From<XdpMode> for XdpRequest {
    fn from(m: XdpMode) -> Self {
        match m {
            XdpMode::Auto => XdpRequest::Auto,
            XdpMode::Native => XdpRequest::Native,
            XdpMode::Generic => XdpRequest::Generic,
            XdpMode::Off => XdpRequest::Off,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SocketLb {
    /// Sockets of the agent's own network namespace: the node's processes, hostNetwork pods.
    Host,
    /// Pods' sockets too: pod→Service connections then need no per-packet NAT.
    All,
    Off,
}

impl From<SocketLb> for SocketLbMode {
    fn from(m: SocketLb) -> Self {
        match m {
            SocketLb::Host => SocketLbMode::Host,
            SocketLb::All => SocketLbMode::All,
            SocketLb::Off => SocketLbMode::Off,
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// This node's name: endpoints with this nodeName are local.
    #[arg(long, env = "LB_NODE_NAME")]
    pub node_name: Option<String>,
    /// Manifest file or directory (repeatable): standalone mode, no API server.
    #[arg(long = "manifests", value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// Kubeconfig for Kubernetes mode (default: in-cluster config or $KUBECONFIG).
    #[arg(long, value_name = "PATH", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Interface where north-south traffic arrives (repeatable). Default: the one holding the
    /// Node's InternalIP (else ExternalIP), else the one with the IPv4 default route.
    #[arg(long = "ext-iface", value_name = "IFACE")]
    pub ext_ifaces: Vec<String>,
    /// Host-side pod interfaces, as glob patterns (repeatable); later links are attached too.
    /// Default: veth*, cali*, lxc* and the ports of Linux bridges.
    #[arg(long = "pod-iface", value_name = "GLOB")]
    pub pod_ifaces: Vec<String>,
    /// Node addresses that serve NodePorts (default: the external interfaces' IPv4 addresses and
    /// the Node object's addresses this host holds).
    #[arg(long = "nodeport-addresses", value_name = "CIDR")]
    pub nodeport_cidrs: Vec<Ipv4Net>,
    /// How the north-south program runs: auto (native on network cards, generic on veth and
    /// software devices, where native XDP cannot deliver what lb transmits), native, generic, or
    /// off (TC ingress).
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpMode,
    /// Services for sockets at connect()/sendmsg() time (cgroup socket hooks): host (the node's
    /// own network namespace), all (pods' sockets too), or off.
    #[arg(long, value_enum, default_value = "host")]
    pub socket_lb: SocketLb,
    /// The cgroup v2 directory the socket hooks attach to; they act on its processes and those
    /// of every cgroup below. Default: the root of the cgroup v2 hierarchy (/proc/mounts).
    #[arg(long, env = "LB_CGROUP_PATH", value_name = "DIR")]
    pub cgroup_path: Option<PathBuf>,
    #[arg(long, default_value = crate::dataplane::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Where /metrics, /healthz and /livez are served.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: std::net::SocketAddr,
}

pub async fn run(args: RunArgs) -> Result<()> {
    // First of all, so a SIGTERM during startup is seen by the loop, not the default action.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    let opts = Options {
        pin_path: args.pin_path.clone(),
        ..Default::default()
    };
    let mut dp = Dataplane::open(&opts)?;
    let caps = Capacities::read(dp.layout())?;
    let mut rec = Reconciler::adopt(&dp.maps, caps)?;
    // kube-proxy's healthz timeout is twice its sync period.
    let metrics = Metrics::new(Some(dp.layout().clone()), caps, 2 * RESYNC_INTERVAL);
    tokio::spawn(metrics::serve_retrying(args.metrics_addr, metrics.clone()));
    let mut health_servers = HealthServers::new(metrics.proxy_health());
    tracing::info!(
        node = %node_name,
        pin_path = %args.pin_path.display(),
        adopted_frontends = rec.programmed().frontends.len(),
        "dataplane loaded"
    );
    set_socket_lb(&mut dp, &args);
    let (handle, mut link_events) = interfaces::watch()?;
    let mut attachments = Attachments::new(&args, metrics.clone())?;
    let mut snapshots = start_source(&args, &node_name).await?;
    // Never program from an empty view: after a restart that would wipe working services. The
    // programs a previous agent attached keep working meanwhile.
    tokio::select! {
        r = snapshots.changed() => r.context("the source stopped before its first sync")?,
        _ = sigterm.recv() => return stopped(),
        _ = sigint.recv() => return stopped(),
    }
    // Attached once the Node object is known (at the loop's first turn): by default it decides
    // the external interface.
    let mut host = interfaces::scan(&handle).await?;
    let mut first = true;
    let mut node = NodeContext {
        name: node_name,
        nodeport_addrs: Vec::new(),
    };

    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.tick().await;
    let mut ct_collect = tokio::time::interval(CT_COLLECT_INTERVAL);
    let mut reported: BTreeSet<Problem> = BTreeSet::new();
    let mut event_at = Instant::now();
    let mut tracker = Tracker::default();
    // The snapshot the tracker has seen.
    let mut seen = Arc::new(Snapshot::default());
    // Plan the whole maps (cold start, after re-reading them) rather than the changes only.
    let mut whole = true;
    loop {
        let snap: Arc<Snapshot> = snapshots.borrow_and_update().clone();
        // The Node object may have changed its addresses.
        let node_obj = snap.objects.nodes.get(&node.name).map(|n| &**n);
        node.nodeport_addrs = attachments.sync(&mut dp, &host, node_obj, first);
        first = false;
        sync_host_addrs(&mut dp, &host, &node.nodeport_addrs);
        let changes = tracker.update(&seen.objects, &snap.objects, &node);
        seen = snap.clone();
        let desired = tracker.desired();
        let report = if whole || changes.node {
            whole = false;
            rec.apply(&mut dp.maps, desired)
        } else {
            rec.apply_changes(&mut dp.maps, desired, &changes)
        };
        let problems = snap.problems.iter().chain(&desired.problems);
        report_problems(problems, &mut reported);
        let latency = event_at.elapsed();
        metrics.record_sync(&report, latency, desired, rec.programmed(), &reported);
        health_servers.sync(&desired.health_checks);
        for (svc, map) in &report.refused {
            tracing::error!(service = %svc, map, "service refused: the map is full");
        }
        for e in &report.errors {
            tracing::error!("map write failed: {e}");
        }
        if report.writes() > 0 {
            tracing::info!(
                frontends = desired.frontends.len(),
                writes = report.writes(),
                latency_ms = event_at.elapsed().as_secs_f64() * 1e3,
                "maps updated"
            );
        }
        tokio::select! {
            r = snapshots.changed() => {
                if r.is_err() {
                    anyhow::bail!("the source stopped");
                }
            }
            Some(()) = link_events.recv() => rescan(&handle, &mut host).await,
            _ = resync.tick() => {
                match rec.resync(&dp.maps) {
                    Ok(()) => whole = true,
                    Err(e) => tracing::warn!("re-reading the maps: {e:#}"),
                }
                // Attachments that failed get another try (at the top of the loop).
                attachments.forget_failures();
                rescan(&handle, &mut host).await;
            }
            _ = ct_collect.tick() => {
                match conntrack::collect(&mut dp.maps, conntrack::monotonic_ns()) {
                    Ok(c) => metrics.record_conntrack(&c),
                    Err(e) => tracing::warn!("collecting expired flows: {e:#}"),
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        event_at = Instant::now();
    }
    stopped()
}

/// Look at the links again; the loop's next turn attaches to new ones, lets go of vanished
/// ones and follows address changes.
async fn rescan(handle: &rtnetlink::Handle, host: &mut interfaces::Host) {
    match interfaces::scan(handle).await {
        Ok(h) => *host = h,
        Err(e) => tracing::warn!("rescanning interfaces: {e:#}"),
    }
}

/// Attach (or detach) the socket hooks. A failure leaves the packet path working: it is logged
/// and the agent goes on.
fn set_socket_lb(dp: &mut Dataplane, args: &RunArgs) {
    let mode = SocketLbMode::from(args.socket_lb);
    let cgroup = match &args.cgroup_path {
        Some(p) => Ok(p.clone()),
        None => socket_lb::cgroup2_root(),
    };
    let result = cgroup.and_then(|cgroup| dp.set_socket_lb(mode, &cgroup, Ipv4Addr::UNSPECIFIED));
    match result {
        Ok(cgroup) if mode != SocketLbMode::Off => tracing::info!(
            mode = mode.name(),
            cgroup = %cgroup.display(),
            "socket hooks attached"
        ),
        Ok(_) => tracing::info!("socket hooks off"),
        Err(e) => tracing::error!(
            mode = mode.name(),
            "socket hooks not attached, the node's own traffic gets no Services: {e:#}"
        ),
    }
}

/// What the socket hooks need of the node's addresses: which ones it holds (externalIPs and
/// LoadBalancer IPs are only translated then) and the one affinity is keyed by.
fn sync_host_addrs(dp: &mut Dataplane, host: &interfaces::Host, nodeport_addrs: &[Ipv4Addr]) {
    let held: BTreeSet<u32> = host
        .links
        .values()
        .flat_map(|l| &l.addrs)
        .map(|a| u32::from_ne_bytes(a.octets()))
        .collect();
    if let Err(e) = dp.maps.set_host_addrs(&held) {
        tracing::warn!("recording the node's addresses for the socket hooks: {e:#}");
    }
    if let Some(addr) = nodeport_addrs.first() {
        if let Err(e) = dp.set_socket_node_addr(*addr) {
            tracing::warn!("setting the socket hooks' affinity address: {e:#}");
        }
    }
}

fn stopped() -> Result<()> {
    tracing::info!("stopping; programs and maps stay in place");
    Ok(())
}

async fn start_source(args: &RunArgs, node_name: &str) -> Result<source::Receiver> {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    if args.manifests.is_empty() {
        // Kubernetes mode: the first snapshot comes once every initial list has completed.
        let client = source::kube::client(args.kubeconfig.as_deref()).await?;
        tokio::spawn(source::kube::run(client, node_name.to_string(), tx));
        return Ok(rx);
    }
    // The first snapshot comes once every root exists and every file parses.
    tokio::spawn(Manifests::new(args.manifests.clone()).run(tx));
    Ok(rx)
}

/// Log each problem once, when it appears.
fn report_problems<'a>(now: impl Iterator<Item = &'a Problem>, reported: &mut BTreeSet<Problem>) {
    let now: BTreeSet<Problem> = now.cloned().collect();
    for p in now.difference(reported) {
        // The message says what became of it (skipped, refused, kept, fallen back).
        tracing::error!(object = %p.object, field = %p.field, "{}", p.message);
    }
    *reported = now;
}

fn hostname() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname (or pass --node-name)")?
        .trim()
        .to_string())
}
