//! `lb-agent run`: load (or adopt) the dataplane, attach it to the node's interfaces, and keep
//! the maps equal to what the source says until told to stop. Stopping leaves programs and maps
//! in place: traffic keeps flowing and the next agent adopts them.
mod attachments;
pub mod cli;
pub mod interfaces;
pub mod node_local;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    dataplane::{
        conntrack,
        reconcile::{Reconciler, Report, Served},
        socket_lb, Capacities, Dataplane, Maps, Options, PinLayout, ServiceMaps, SocketLbMode,
        XdpRequest,
    },
    health::HealthServers,
    metrics::{self, Metrics, Synced},
    model::{Changes, Desired, NodeContext, Problem, Tracker},
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
    /// Node's InternalIP (else ExternalIP), else the one with the IPv4 default route, else the one
    /// with the IPv6 default route.
    #[arg(long = "ext-iface", value_name = "IFACE")]
    pub ext_ifaces: Vec<String>,
    /// Host-side pod interfaces, as glob patterns (repeatable); later links are attached too.
    /// Default: veth*, cali*, lxc* and the ports of Linux bridges.
    #[arg(long = "pod-iface", value_name = "GLOB")]
    pub pod_ifaces: Vec<String>,
    /// Node addresses that serve NodePorts, IPv4 or IPv6 CIDRs (default: the external
    /// interfaces' addresses and the Node object's addresses this host holds). A family without a
    /// CIDR of its own gets the default, as kube-proxy's per-family proxiers do.
    #[arg(long = "nodeport-addresses", value_name = "CIDR")]
    pub nodeport_cidrs: Vec<IpNet>,
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
    /// Size of the TCP conntrack table (flows; the reply table is as large). Default: 32768
    /// per CPU, at least 131072 (kube-proxy's nf_conntrack sizing), at most 262144.
    #[arg(long, value_name = "FLOWS", value_parser = clap::value_parser!(u32).range(1024..))]
    pub conntrack_max: Option<u32>,
    /// Size of the conntrack table of UDP and other non-TCP flows. Default: 16384 per CPU, at
    /// least 65536, at most 131072.
    #[arg(long, value_name = "FLOWS", value_parser = clap::value_parser!(u32).range(1024..))]
    pub conntrack_udp_max: Option<u32>,
    /// Source ports SNAT takes (node → remote backend for externalTrafficPolicy=Cluster), per
    /// backend and node address. Keep it outside the node's ephemeral port range
    /// (net.ipv4.ip_local_port_range) so SNAT never takes a local socket's port.
    #[arg(long, value_name = "MIN-MAX", default_value = "61000-65535", value_parser = parse_port_range)]
    pub snat_port_range: (u16, u16),
    #[arg(long, default_value = crate::dataplane::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Where /metrics, /healthz and /livez are served.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: std::net::SocketAddr,
    /// Export traffic per frontend and scope (lb_frontend_packets/bytes_total), not only per
    /// service: four series per ClusterIP-and-NodePort port, some 70 MB of /metrics at 50,000
    /// services where the per-service totals take 7.
    #[arg(long)]
    pub metrics_per_frontend: bool,
}

/// `MIN-MAX`, both included, MIN <= MAX, MIN at least 1024 (below are the well-known ports).
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (min, max) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not MIN-MAX"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{p:?} in {s:?}: {e}"))
    };
    let (min, max) = (port(min)?, port(max)?);
    if min < 1024 || min > max {
        return Err(format!("{s:?}: want 1024 <= MIN <= MAX <= 65535"));
    }
    Ok((min, max))
}

/// The conntrack tables' sizes: the flags, else scaled with the CPUs as kube-proxy sizes
/// nf_conntrack (`--conntrack-max-per-core` 32768, `--conntrack-min` 131072), with a ceiling:
/// nf_conntrack allocates entries as flows come, a BPF table all of them when it is created
/// (~200 bytes a flow with its reply entry), so 128 CPUs would otherwise take 1.3 GB at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConntrackSizes {
    tcp: u32,
    udp: u32,
}

impl ConntrackSizes {
    fn from_args(args: &RunArgs) -> Result<Self> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)? as u32;
        Ok(Self::with_cpus(
            args.conntrack_max,
            args.conntrack_udp_max,
            cpus,
        ))
    }

    fn with_cpus(tcp: Option<u32>, udp: Option<u32>, cpus: u32) -> Self {
        let scaled = |per_cpu: u32, min: u32| per_cpu.saturating_mul(cpus).clamp(min, 2 * min);
        ConntrackSizes {
            tcp: tcp.unwrap_or_else(|| scaled(32_768, 131_072)),
            udp: udp.unwrap_or_else(|| scaled(16_384, 65_536)),
        }
    }

    fn capacities(self) -> Vec<(&'static str, u32)> {
        use lb_common::map_names as n;
        vec![
            (n::CT4, self.tcp),
            (n::RNAT4, self.tcp),
            (n::CT_ANY4, self.udp),
            (n::RNAT_ANY4, self.udp),
        ]
    }

    /// Pinned maps keep the size they were created with (their flows are what a restart keeps):
    /// a new size applies after `lb-agent cleanup`, which drops the flows.
    fn warn_if_pinned_differ(self, caps: &Capacities) {
        for (table, want, have) in [("TCP", self.tcp, caps.ct), ("UDP", self.udp, caps.ct_any)] {
            if want != have {
                tracing::warn!(
                    table,
                    requested = want,
                    pinned = have,
                    "the pinned {table} conntrack table keeps its size (its flows survive \
                     restarts); `lb-agent cleanup` and a start recreate it at the requested size"
                );
            }
        }
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    // First of all, so a SIGTERM during startup is seen by the loop, not the default action.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    let sizes = ConntrackSizes::from_args(&args)?;
    let opts = Options {
        pin_path: args.pin_path.clone(),
        capacities: sizes.capacities(),
    };
    // One agent per pin path, held until the process ends.
    let layout = PinLayout::new(&args.pin_path);
    layout.create()?;
    let _lock = layout.lock()?;
    let mut dp = Dataplane::open(&opts)?;
    let caps = Capacities::read(dp.layout())?;
    sizes.warn_if_pinned_differ(&caps);
    dp.set_snat_ports(args.snat_port_range)?;
    let mut rec = Reconciler::adopt(&dp.maps, caps)?;
    // kube-proxy's healthz timeout is twice its sync period.
    let layout = Some(dp.layout().clone());
    let per_frontend = args.metrics_per_frontend;
    let metrics = Metrics::with_series(layout, caps, 2 * RESYNC_INTERVAL, per_frontend);
    tokio::spawn(metrics::serve_retrying(args.metrics_addr, metrics.clone()));
    // On a thread of its own: a walk of the flow tables never holds up the loop.
    let gc_metrics = metrics.clone();
    conntrack::Collector::open(dp.layout())?.spawn(CT_COLLECT_INTERVAL, move |r| match r {
        Ok(c) => gc_metrics.record_conntrack(&c),
        Err(e) => tracing::warn!("collecting expired flows: {e:#}"),
    })?;
    let mut health_servers = HealthServers::new(metrics.proxy_health());
    tracing::info!(
        node = %node_name,
        pin_path = %args.pin_path.display(),
        adopted_frontends = rec.programmed::<Ipv4Addr>().frontends.len(),
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
        name: node_name.clone(),
        nodeport_addrs: Vec::new(),
    };
    let mut node6 = NodeContext::<Ipv6Addr> {
        name: node_name,
        nodeport_addrs: Vec::new(),
    };

    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.tick().await;
    let mut reported: BTreeSet<Problem> = BTreeSet::new();
    let mut event_at = Instant::now();
    let mut tracker = Tracker::default();
    // IPv6 Services: the socket hooks serve them (lb has no IPv6 packet path yet).
    let mut tracker6 = Tracker::<Ipv6Addr>::default();
    // The snapshot the tracker has seen.
    let mut seen = Arc::new(Snapshot::default());
    // Plan the whole maps (cold start, after re-reading them) rather than the changes only.
    let mut whole = true;
    let liveness = metrics.liveness();
    loop {
        liveness.turned();
        let snap: Arc<Snapshot> = snapshots.borrow_and_update().clone();
        // The Node object may have changed its addresses.
        let node_obj = snap.objects.nodes.get(&node.name).map(|n| &**n);
        (node.nodeport_addrs, node6.nodeport_addrs) =
            attachments.sync(&mut dp, &host, node_obj, first);
        first = false;
        sync_host_addrs(&mut dp, &host, &node.nodeport_addrs, &node6.nodeport_addrs);
        let changes = tracker.update(&seen.objects, &snap.objects, &node);
        let changes6 = tracker6.update(&seen.objects, &snap.objects, &node6);
        seen = snap.clone();
        let desired = tracker.desired();
        let desired6 = tracker6.desired();
        let report = apply(&mut rec, &mut dp.maps, desired, &changes, whole);
        let report = report.and(apply(&mut rec, &mut dp.maps, desired6, &changes6, whole));
        whole = false;
        let problems = snap.problems.iter().chain(&desired.problems);
        let problems = problems.chain(&desired6.problems);
        report_problems(problems, &mut reported);
        let latency = event_at.elapsed();
        let synced = Synced {
            desired,
            desired6,
            programmed: rec.programmed(),
            programmed6: rec.programmed(),
        };
        metrics.record_sync(&report, latency, &synced, &reported);
        health_servers.sync(&desired.health_checks);
        attachments.check_pod_interfaces(desired.retained.values(), &host);
        for (svc, map) in &report.refused {
            tracing::error!(service = %svc, map, "service refused: the map is full");
        }
        for e in &report.errors {
            tracing::error!("map write failed: {e}");
        }
        if report.writes() > 0 {
            tracing::info!(
                frontends = desired.frontends.len(),
                frontends6 = desired6.frontends.len(),
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
                    Ok(true) => {
                        tracing::warn!("the maps changed behind the agent's back: repairing");
                        whole = true;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("re-reading the maps: {e:#}"),
                }
                // Attachments that failed get another try (at the top of the loop).
                attachments.forget_failures();
                rescan(&handle, &mut host).await;
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        event_at = Instant::now();
    }
    stopped()
}

/// One family's turn: the changes only, or the whole desired state (at start, after drift, when
/// the node changed).
fn apply<A: Served>(
    rec: &mut Reconciler,
    maps: &mut Maps,
    desired: &Desired<A>,
    changes: &Changes<A>,
    whole: bool,
) -> Report
where
    Maps: ServiceMaps<A>,
{
    match whole || changes.node {
        true => rec.apply(maps, desired),
        false => rec.apply_changes(maps, desired, changes),
    }
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

/// What the socket hooks need of the node's addresses, of both families: which ones it holds
/// (externalIPs and LoadBalancer IPs are only translated then) and the one affinity is keyed by.
fn sync_host_addrs(
    dp: &mut Dataplane,
    host: &interfaces::Host,
    nodeport_addrs: &[Ipv4Addr],
    nodeport_addrs6: &[Ipv6Addr],
) {
    let links = host.links.values();
    let held: BTreeSet<Ipv4Addr> = links
        .clone()
        .flat_map(|l| l.addrs.iter().copied())
        .collect();
    let held6: BTreeSet<Ipv6Addr> = links.flat_map(|l| l.addrs6.iter().copied()).collect();
    // Each write on its own: one family's failure must not keep the other's stale.
    let results = [
        dp.maps.set_host_addrs(&held),
        dp.maps.set_host_addrs6(&held6),
        nodeport_addrs
            .first()
            .map_or(Ok(()), |addr| dp.set_socket_node_addr(*addr)),
        dp.set_socket_node_addr6(nodeport_addrs6.first().copied()),
    ];
    for e in results.into_iter().filter_map(Result::err) {
        tracing::warn!("recording the node's addresses for the socket hooks: {e:#}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_sizes_scale_with_cpus_between_a_floor_and_a_ceiling() {
        // (--conntrack-max, --conntrack-udp-max, CPUs, TCP table, UDP table)
        let table = [
            (None, None, 1, 131_072, 65_536),
            (None, None, 4, 131_072, 65_536),
            (None, None, 6, 196_608, 98_304),
            (None, None, 8, 262_144, 131_072),
            (None, None, 128, 262_144, 131_072),
            (Some(4096), None, 64, 4096, 131_072),
            (Some(1_000_000), Some(500_000), 2, 1_000_000, 500_000),
            (None, Some(2048), 2, 131_072, 2048),
        ];
        for (tcp, udp, cpus, want_tcp, want_udp) in table {
            let got = ConntrackSizes::with_cpus(tcp, udp, cpus);
            let want = ConntrackSizes {
                tcp: want_tcp,
                udp: want_udp,
            };
            assert_eq!(got, want, "{tcp:?} {udp:?} on {cpus} CPUs");
        }
    }

    #[test]
    fn snat_port_ranges() {
        let table = [
            ("61000-65535", Ok((61_000, 65_535))),
            ("1024-1024", Ok((1024, 1024))),
            (" 40000 - 50000", Ok((40_000, 50_000))),
            ("1000-2000", Err("want 1024 <= MIN <= MAX <= 65535")),
            ("50000-40000", Err("want 1024 <= MIN <= MAX <= 65535")),
            ("61000", Err("is not MIN-MAX")),
            ("61000-70000", Err("\"70000\" in")),
        ];
        for (text, want) in table {
            match (parse_port_range(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: {got:?}, want {want:?}"),
            }
        }
    }
}
