//! `cargo xtask bench`: per-packet cost of lb's XDP program through BPF_PROG_TEST_RUN, next to a
//! bare XDP_PASS program measured in the same run as the floor.
//!
//! Method: BPF_PROG_TEST_RUN with repeat > 1 runs every repeat on the same, already rewritten
//! buffer, so each path is measured with repeat = 1 over many calls and the median of the
//! kernel-reported durations is printed (the syscall's own cost is outside that duration).
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use lb::dataplane::{cleanup, Dataplane, Options, PROG_XDP_EXT, PROG_XDP_FLOOR};
use lb_common::{
    map_names, Backend4, Frontend4, Frontend4Key, Service, BE_F_LOCAL, KIND_NODE_PORT, PROTO_TCP,
    SCOPE_EXTERNAL, VERDICT_REJECT,
};
use lb_tests::packets::{Pkt, ACK, SYN};

const RUNS: usize = 20_000;

fn main() -> Result<()> {
    let pin = PathBuf::from(format!("/sys/fs/bpf/lb-bench-{}", std::process::id()));
    let result = bench(&pin);
    cleanup(&pin).context("removing the bench's pins")?;
    result
}

fn bench(pin: &std::path::Path) -> Result<()> {
    let opts = Options {
        pin_path: pin.to_path_buf(),
        capacities: vec![(map_names::CT4, 65_536), (map_names::RNAT4, 65_536)],
    };
    let mut dp = Dataplane::open(&opts)?;
    program_nodeport(&mut dp)?;
    let floor = dp.xdp(PROG_XDP_FLOOR)?;
    let lb = dp.xdp(PROG_XDP_EXT)?;

    let non_service = Pkt::new("198.51.100.7:40000", "192.0.2.10:22", ACK).build();
    let established = Pkt::new("198.51.100.7:40001", "192.0.2.10:30080", ACK).build();
    // Every new-flow packet has a source port of its own, so each one misses conntrack.
    let new_flows: Vec<Vec<u8>> = (0..RUNS)
        .map(|i| {
            let src = format!("198.51.100.7:{}", 1024 + i);
            Pkt::new(&src, "192.0.2.10:30080", SYN).build()
        })
        .collect();
    run(lb, &established)?; // creates the flow the established case hits

    println!("lb XDP per-packet cost, BPF_PROG_TEST_RUN repeat=1, median of {RUNS} runs");
    println!("machine: {} cores, kernel {}", cores(), kernel());
    let rows = [
        (
            "floor: bare XDP_PASS program",
            median(floor, std::iter::repeat_n(&non_service, RUNS))?,
        ),
        (
            "non-service packet (passes)",
            median(lb, std::iter::repeat_n(&non_service, RUNS))?,
        ),
        (
            "NodePort new flow (CT miss, DNAT)",
            median(lb, new_flows.iter())?,
        ),
        (
            "NodePort established flow (CT hit, DNAT)",
            median(lb, std::iter::repeat_n(&established, RUNS))?,
        ),
    ];
    println!("{:<44} {:>10}", "path", "ns/packet");
    for (name, d) in rows {
        println!("{name:<44} {:>10}", d.as_nanos());
    }
    println!("command: cargo xtask bench");
    Ok(())
}

fn program_nodeport(dp: &mut Dataplane) -> Result<()> {
    let node = u32::from_ne_bytes(Ipv4Addr::new(192, 0, 2, 10).octets());
    let backend = Backend4 {
        addr: u32::from_ne_bytes(Ipv4Addr::new(10, 244, 1, 7).octets()),
        port: 8080u16.to_be(),
        flags: BE_F_LOCAL,
        _pad: 0,
    };
    dp.maps.set_backend(1, &backend)?;
    let svc = Service {
        verdict: VERDICT_REJECT,
        ..Default::default()
    };
    dp.maps.set_service(1, &svc, &[1], 0)?;
    let key = Frontend4Key {
        addr: node,
        port: 30080u16.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    };
    let fe = Frontend4 {
        service_id: 1,
        stats_id: 1,
        kind: KIND_NODE_PORT,
        _pad: [0; 3],
    };
    dp.maps.set_frontend(&key, &fe)
}

fn run(prog: &aya::programs::Xdp, packet: &[u8]) -> Result<Duration> {
    let mut out = vec![0u8; packet.len() + 256];
    let res = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    Ok(res.duration)
}

fn median<'a>(
    prog: &aya::programs::Xdp,
    packets: impl Iterator<Item = &'a Vec<u8>>,
) -> Result<Duration> {
    let mut all = packets.map(|p| run(prog, p)).collect::<Result<Vec<_>>>()?;
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
