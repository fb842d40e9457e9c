//! The parser against frames it was not written for: valid frames with bytes changed in their
//! headers, lengths and flags that lie, and truncations, through XDP, TC ingress and TC egress
//! (BPF_PROG_TEST_RUN). Whatever comes in, what comes out is either the frame unchanged or, when
//! the frame was valid to begin with, a valid one (every checksum right), and a frame lb forwards
//! at its own length keeps every byte past the headers it parsed: a rewrite never strays into the
//! payload. A bounded number of cases runs with the suite (`LB_FUZZ_CASES`, default 3,000, from
//! a fixed seed, `LB_FUZZ_SEED`, so a failure repeats); a longer run is a variable away.
use etherparse::{SlicedPacket, TransportSlice};
use lb_tests::packets::checksums;

use super::*;

/// xorshift64: reproducible cases without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Frames that reach every part of the parser: NodePort and ClusterIP flows (TCP, UDP, with IP
/// options, fragments), replies, an ICMP error quoting a flow, a pod's packet.
fn seeds() -> Vec<Vec<u8>> {
    let mut with_options = Pkt::new("198.51.100.7:41004", "192.0.2.10:30080", SYN);
    with_options.ip_options = vec![1, 1, 1, 0];
    let mut first_frag = Pkt::new("198.51.100.7:41005", "192.0.2.10:30080", UDP);
    first_frag.frag = (true, 0);
    let mut later_frag = first_frag.clone();
    later_frag.frag = (false, 3);
    let mut data = Pkt::new("198.51.100.7:41006", "192.0.2.10:30080", ACK);
    data.payload = b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n".to_vec();
    let syn = Pkt::new("198.51.100.7:41001", "192.0.2.10:30080", SYN);
    vec![
        syn.build(),
        Pkt::new("198.51.100.7:41002", "192.0.2.10:30080", UDP).build(),
        Pkt::new("10.244.1.5:41003", "10.96.0.10:80", SYN)
            .macs(POD_MAC, NODE_MAC)
            .build(),
        with_options.build(),
        first_frag.build(),
        later_frag.build(),
        data.build(),
        Pkt::new("10.244.1.7:8080", "198.51.100.7:41001", ACK)
            .macs(POD_MAC, NODE_MAC)
            .build(),
        icmp_error(
            "192.0.2.1".parse().expect("ip"),
            &syn,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
            (GW_MAC, NODE_MAC),
            64,
        ),
    ]
}

/// One mutation or two: a header byte changed, a length or flag that lies, a truncation.
fn mutate(rng: &mut Rng, frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    for _ in 0..1 + rng.below(2) {
        match rng.below(5) {
            0 => {
                let at = rng.below(f.len().min(90));
                f[at] = rng.next() as u8;
            }
            // IHL (and version), total length, fragment bits and offset, protocol.
            1 => f[14] = rng.next() as u8,
            2 => {
                let len = (rng.next() as u16).to_be_bytes();
                f[16..18].copy_from_slice(&len);
            }
            3 => f[20] = rng.next() as u8,
            _ => f[23] = [1, 6, 17, rng.next() as u8][rng.below(4)],
        }
    }
    if rng.below(3) == 0 {
        // The kernel refuses test runs of less than an Ethernet header.
        f.truncate(14 + rng.below(f.len() - 14));
    }
    f
}

/// Where the payload starts in a valid TCP or UDP frame (None for anything else).
fn payload_start(frame: &[u8]) -> Option<usize> {
    let sliced = SlicedPacket::from_ethernet(frame).ok()?;
    let payload = match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => t.payload(),
        Some(TransportSlice::Udp(u)) => u.payload(),
        _ => return None,
    };
    Some(frame.len() - payload.len())
}

#[test]
fn fuzz_the_parser_leaves_frames_unchanged_or_valid() {
    with_node("pkt-fuzz", |node| {
        web(
            node,
            &[
                (1, "10.244.1.7", 8080, BE_F_LOCAL),
                (2, "10.244.6.9", 8080, 0),
            ],
        );
        let seeds = seeds();
        let cases = env_or("LB_FUZZ_CASES", 3_000);
        let seed = env_or("LB_FUZZ_SEED", 0x5eed_1b00_c0de_f00d);
        let mut rng = Rng(seed);
        let (mut changed, mut failures) = (0, Vec::new());
        for case in 0..cases {
            let seed_frame = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed_frame);
            let valid_in = checksums(&input).is_ok();
            let mut runs = vec![("xdp", node.xdp(&input))];
            // The kernel refuses to test-run an skb too short for the IPv4 header its EtherType
            // announces (EINVAL); XDP gets every length.
            if input.len() >= 14 + 20 {
                runs.push(("tc", node.tc(&input)));
                runs.push(("tc egress", node.tc_egress(&input)));
            }
            for (hook, (verdict, out)) in runs {
                if out == input {
                    continue;
                }
                changed += 1;
                let mut problems = Vec::new();
                if valid_in {
                    if let Err(e) = checksums(&out) {
                        problems.push(e);
                    }
                }
                // Forwarded at its own length (not answered): the payload is the sender's.
                let answered =
                    matches!((hook, verdict), ("xdp", XDP_TX)) && out.len() != input.len();
                if !answered && out.len() == input.len() {
                    if let Some(at) = payload_start(&input) {
                        if out[at..] != input[at..] {
                            problems.push(format!("payload from byte {at} rewritten"));
                        }
                    }
                }
                if !problems.is_empty() {
                    failures.push(format!(
                        "case {case} ({hook}, verdict {verdict}): {}\n  in  {}\n  out {}",
                        problems.join("; "),
                        hex(&input),
                        hex(&out)
                    ));
                }
            }
        }
        println!("fuzz: {cases} frames from seed {seed:#x}, {changed} rewritten");
        assert!(
            changed > 0,
            "no frame was ever translated: the cases miss the parser"
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}
