//! `cargo xtask bench`: per-packet cost of lb's programs through BPF_PROG_TEST_RUN, next to a
//! bare XDP_PASS program measured in the same run as the floor; then the XDP forwarding rate of
//! established NodePort traffic with live frames, next to a bare XDP_TX program on the same veth.
//!
//! Method: BPF_PROG_TEST_RUN with repeat > 1 runs every repeat on the same, already rewritten
//! buffer, so each path is measured with repeat = 1 over many calls and the median of the
//! kernel-reported durations is printed (the syscall's own cost is outside that duration).
//! Live frames (BPF_F_TEST_XDP_LIVE_FRAMES) are different: the kernel builds a fresh frame from
//! the input for every repeat and really transmits what the program sends with XDP_TX, so one
//! call with a large repeat is timed by the wall clock.
//!
//! Everything runs in a lab namespace, so the FIB lookups see routes and neighbours this bench
//! made:
//!
//! ```text
//!  pod 10.244.1.5 ── h1 ┐ node ┌ eth0 192.0.2.10 ── peer0 (lb_xdp_sink)
//!                       │      │   routes: 10.244.2.0/24 via 192.0.2.20 (another node)
//! ```
use lb::dataplane::ServiceMaps;
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use aya::programs::{xdp::XdpMode, TestRun, TestRunAttrs, TestRunOptions, TestRunResult, Xdp};
use lb::dataplane::{
    ifindex, Dataplane, Options, PROG_TC_POD, PROG_XDP_EXT, PROG_XDP_FLOOR, PROG_XDP_FLOOR_TX,
    PROG_XDP_SINK,
};
use lb_common::{
    map_names, Backend4, Frontend4, Frontend4Key, Service, BENCH_FRAME_LEN, KIND_CLUSTER_IP,
    KIND_NODE_PORT, PROTO_TCP, SCOPE_EXTERNAL, SCOPE_INTERNAL, VERDICT_REJECT,
};
use lb_tests::{
    lab::Lab,
    packets::{Pkt, ACK, SYN},
    topology::fib_node,
};

const RUNS: usize = 20_000;
/// Frames per live-frames call, and how many calls per program (alternated, median kept).
const LIVE_FRAMES: u32 = 2_000_000;
const LIVE_ROUNDS: usize = 5;
const XDP_TX: u32 = 3;

const NODE_IP: &str = "192.0.2.10";
const CLIENT: &str = "198.51.100.7";
const POD: &str = "10.244.1.5";
/// The service's endpoints, on another node: NodePort traffic to it is SNATed and sent back out
/// of eth0 with XDP_TX, as on a node forwarding to remote pods.
/// 16 of them: SNAT ports are claimed per backend (about 4,500 each), and the new-flow case
/// opens 20,000 flows.
const BACKENDS: u8 = 16;

fn main() -> Result<()> {
    let lab = Lab::new("lb-bench")?;
    let node = lab.netns("node")?;
    let pod = lab.netns("pod")?;
    lab.veth(&pod, "eth0", &node, "h1")?;
    fib_node(&node)?;
    node.sh("ip route add 10.244.1.5/32 dev h1")?;
    let pin = lab.pin_path("bench");
    node.enter(move || bench(&pin))?
}

fn bench(pin: &Path) -> Result<()> {
    let opts = Options {
        pin_path: pin.to_path_buf(),
        capacities: vec![
            (map_names::CT4, 65_536),
            (map_names::RNAT4, 65_536),
            (map_names::CT_ANY4, 65_536),
            (map_names::RNAT_ANY4, 65_536),
        ],
    };
    let mut dp = Dataplane::open(&opts)?;
    let eth0 = ifindex("eth0")?;
    let h1 = ifindex("h1")?;
    dp.maps.set_node_addr(eth0, NODE_IP.parse()?)?;
    program_services(&mut dp)?;
    println!("lb per-packet cost, BPF_PROG_TEST_RUN repeat=1, median of {RUNS} runs");
    println!("machine: {} cores, kernel {}", cores(), kernel());
    let nodeport = flows(CLIENT, "192.0.2.10:30080");
    per_packet(&dp, &nodeport, eth0, h1)?;
    println!();
    live_frames(&mut dp, &nodeport.ack, eth0)?;
    println!("command: cargo xtask bench");
    Ok(())
}

fn per_packet(dp: &Dataplane, nodeport: &Flows, eth0: u32, h1: u32) -> Result<()> {
    let (floor, lb, pod) = (
        dp.xdp(PROG_XDP_FLOOR)?,
        dp.xdp(PROG_XDP_EXT)?,
        dp.tc(PROG_TC_POD)?,
    );
    let (ext, pod_if) = (Hook::Xdp(eth0), Hook::Tc(h1));
    let non_service = Pkt::new(&format!("{CLIENT}:40000"), "192.0.2.10:22", ACK).build();
    let clusterip = flows(POD, "10.96.0.10:80");
    // The first packet of each creates the flow the established case hits.
    run(lb, &nodeport.syn[0], ext)?;
    run(pod, &clusterip.syn[0], pod_if)?;
    let xdp = |p: &Xdp, pkts: &[Vec<u8>]| median(p, pkts, ext);
    let rows = [
        (
            "floor: bare XDP_PASS program",
            xdp(floor, std::slice::from_ref(&non_service))?,
        ),
        ("XDP: non-service packet (passes)", xdp(lb, &[non_service])?),
        (
            "XDP: NodePort new flow (CT miss, DNAT+SNAT)",
            xdp(lb, &nodeport.syn)?,
        ),
        (
            "XDP: NodePort established (CT hit, XDP_TX)",
            xdp(lb, std::slice::from_ref(&nodeport.ack))?,
        ),
        (
            "TC: pod -> ClusterIP new flow (CT miss, DNAT)",
            median(pod, &clusterip.syn, pod_if)?,
        ),
        (
            "TC: pod -> ClusterIP established (CT hit)",
            median(pod, &[clusterip.ack], pod_if)?,
        ),
    ];
    println!("{:<46} {:>10}", "path", "ns/packet");
    for (name, d) in rows {
        println!("{name:<46} {:>10}", d.as_nanos());
    }
    Ok(())
}

/// Established NodePort frames through lb (DNAT, SNAT, MACs from the FIB, XDP_TX) and through a
/// bare XDP_TX program, as live frames on eth0, whose peer drops them in its own XDP program
/// after writing the original frame back (the test run recycles pages as they are).
fn live_frames(dp: &mut Dataplane, established: &[u8], eth0: u32) -> Result<()> {
    let sink = dp.xdp_mut(PROG_XDP_SINK)?;
    // veth transmits XDP frames only to a peer that runs XDP itself.
    sink.attach("peer0", XdpMode::Driver)
        .context("attaching the sink to peer0 (native XDP on veth)")?;
    dp.set_bench_frame(established[..BENCH_FRAME_LEN].try_into()?)?;
    let (lb, floor_tx) = (dp.xdp(PROG_XDP_EXT)?, dp.xdp(PROG_XDP_FLOOR_TX)?);
    let verdict = run(lb, established, Hook::Xdp(eth0))?.return_value;
    ensure!(
        verdict == XDP_TX,
        "lb's verdict for the flow is {verdict}, not XDP_TX"
    );
    let mut rates: [Vec<f64>; 2] = Default::default();
    for _ in 0..LIVE_ROUNDS {
        for (prog, rate) in [lb, floor_tx].into_iter().zip(&mut rates) {
            rate.push(live_rate(prog, established, eth0)?);
        }
    }
    let [lb_rate, floor_rate] = rates.map(|mut r| {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    });
    println!("XDP forwarding with live frames (BPF_F_TEST_XDP_LIVE_FRAMES), one CPU, veth eth0,");
    println!("{LIVE_FRAMES} frames per call, median of {LIVE_ROUNDS} alternated calls");
    println!("{:<46} {:>10}", "program", "Mpps");
    println!(
        "{:<46} {:>10.2}",
        "floor: bare XDP_TX program",
        floor_rate / 1e6
    );
    println!(
        "{:<46} {:>10.2}",
        "lb: NodePort established (DNAT+SNAT, XDP_TX)",
        lb_rate / 1e6
    );
    println!(
        "lb / floor: {:.0}% (target >= 50%)",
        100.0 * lb_rate / floor_rate
    );
    Ok(())
}

/// Frames per second of one live-frames call.
fn live_rate(prog: &Xdp, frame: &[u8], ifindex: u32) -> Result<f64> {
    let ctx = Hook::Xdp(ifindex).ctx(frame);
    let start = Instant::now();
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat: LIVE_FRAMES,
        attrs: TestRunAttrs::new().xdp_live_frames(64),
        ..Default::default()
    })
    .context("BPF_PROG_TEST_RUN with live frames")?;
    Ok(f64::from(LIVE_FRAMES) / start.elapsed().as_secs_f64())
}

/// New-flow packets (each from a source port of its own, so each misses conntrack) and one
/// established-flow packet (the flow of the first).
struct Flows {
    syn: Vec<Vec<u8>>,
    ack: Vec<u8>,
}

fn flows(src: &str, dst: &str) -> Flows {
    let syn = (0..RUNS)
        .map(|i| Pkt::new(&format!("{src}:{}", 1024 + i), dst, SYN).build())
        .collect();
    let ack = Pkt::new(&format!("{src}:1024"), dst, ACK).build();
    Flows { syn, ack }
}

/// A NodePort on eth0's address and a ClusterIP, both to [`BACKENDS`] pods on another node.
fn program_services(dp: &mut Dataplane) -> Result<()> {
    let ids: Vec<u32> = (1..=u32::from(BACKENDS)).collect();
    for (id, host) in ids.iter().zip(1..=BACKENDS) {
        let backend = Backend4 {
            addr: u32::from_ne_bytes([10, 244, 2, host]),
            port: 8080u16.to_be(),
            flags: 0,
            _pad: 0,
        };
        ServiceMaps::<Ipv4Addr>::set_backend(&mut dp.maps, *id, &backend)?;
    }
    let svc = Service {
        verdict: VERDICT_REJECT,
        ..Default::default()
    };
    ServiceMaps::<Ipv4Addr>::set_service(&mut dp.maps, 1, &svc, &ids, 0)?;
    let frontends = [
        (NODE_IP, 30080, SCOPE_EXTERNAL, KIND_NODE_PORT),
        ("10.96.0.10", 80, SCOPE_INTERNAL, KIND_CLUSTER_IP),
    ];
    for (stats_id, (addr, port, scope, kind)) in (1..).zip(frontends) {
        let key = Frontend4Key {
            addr: u32::from_ne_bytes(addr.parse::<Ipv4Addr>()?.octets()),
            port: u16::to_be(port),
            proto: PROTO_TCP,
            scope,
        };
        let fe = Frontend4 {
            service_id: 1,
            stats_id,
            kind,
            flags: 0,
            _pad: [0; 2],
        };
        ServiceMaps::<Ipv4Addr>::set_frontend(&mut dp.maps, &key, &fe)?;
    }
    Ok(())
}

/// Where a packet arrives: XDP or TC, on the interface with this index.
#[derive(Clone, Copy)]
enum Hook {
    Xdp(u32),
    Tc(u32),
}

impl Hook {
    /// The program's context for `packet`.
    fn ctx(self, packet: &[u8]) -> Vec<u8> {
        match self {
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, ...; data_end must
            // equal the packet's length.
            Hook::Xdp(ifindex) => {
                let mut ctx = vec![0u8; 24];
                ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                ctx
            }
            // struct __sk_buff with only ifindex set.
            Hook::Tc(ifindex) => {
                let mut ctx = vec![0u8; 192];
                ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
                ctx
            }
        }
    }
}

fn run<P>(prog: &P, packet: &[u8], hook: Hook) -> Result<TestRunResult>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + 256];
    Ok(prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: Some(&hook.ctx(packet)),
        ..Default::default()
    })?)
}

/// Median duration over [`RUNS`] runs, cycling through `packets`.
fn median<P>(prog: &P, packets: &[Vec<u8>], hook: Hook) -> Result<Duration>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut all = packets
        .iter()
        .cycle()
        .take(RUNS)
        .map(|p| Ok(run(prog, p, hook)?.duration))
        .collect::<Result<Vec<_>>>()?;
    all.sort_unstable();
    Ok(all[all.len() / 2])
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}
