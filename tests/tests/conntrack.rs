//! The agent's conntrack collection against real pinned maps: flows idle beyond their timeout in
//! both directions go (with their reply entries, freeing SNAT ports), the rest are counted; a
//! reply entry that names another flow (its SNAT port taken over) is left to that flow; reply
//! entries whose flow is gone go once TIME_WAIT is over.
use std::time::Duration;

use lb::dataplane::{
    conntrack::{monotonic_ns, reply_key, Collector},
    Dataplane, Options,
};
use lb_common::{
    Ct4, RevNat4, Tuple4, CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_EXTERNAL, CT_F_REPLIED, CT_F_SNAT,
    PROTO_TCP, PROTO_UDP,
};
use lb_tests::{
    clock::monotonic_ns_after,
    lab::{require_privileged, Lab},
};

const NS: u64 = 1_000_000_000;

fn ip(s: &str) -> u32 {
    u32::from_ne_bytes(s.parse::<std::net::Ipv4Addr>().unwrap().octets())
}

fn tuple(src: (&str, u16), dst: (&str, u16), proto: u8) -> Tuple4 {
    Tuple4 {
        saddr: ip(src.0),
        daddr: ip(dst.0),
        sport: src.1.to_be(),
        dport: dst.1.to_be(),
        proto,
        _pad: [0; 3],
    }
}

#[test]
fn expired_flows_are_collected_live_ones_counted() {
    if !require_privileged("conntrack") {
        return;
    }
    let lab = Lab::new("conntrack").expect("lab");
    let opts = Options {
        pin_path: lab.pin_path("node"),
        capacities: vec![],
    };
    let mut dp = Dataplane::open(&opts).expect("dataplane");
    let now = monotonic_ns_after(Duration::from_secs(300));
    // Every flow has a SNAT port of its own, as the datapath guarantees.
    let flow = |flags, ct_ago: u64, snat_port: u16| Ct4 {
        backend_id: 1,
        backend_addr: ip("10.244.1.7"),
        backend_port: 8080u16.to_be(),
        snat_addr: ip("192.0.2.10"),
        snat_port: snat_port.to_be(),
        flags,
        created_ns: now - 300 * NS,
        last_seen_ns: now - ct_ago * NS,
        ..Default::default()
    };
    let vip = ("10.96.0.10", 80);
    // (client port, protocol, flags, client side idle, reply side idle or None, expect kept)
    let cases = [
        (40001, PROTO_TCP, CT_F_ESTABLISHED, 1, None, true),
        (
            40002,
            PROTO_UDP,
            CT_F_SNAT | CT_F_EXTERNAL,
            120,
            Some(1),
            true,
        ),
        (
            40003,
            PROTO_UDP,
            CT_F_SNAT | CT_F_EXTERNAL,
            120,
            Some(120),
            false,
        ),
        (40004, PROTO_TCP, 0, 61, None, false),
        // UDP without a reply expires after 30 s, with one after 60 s; in their own table.
        (40005, PROTO_UDP, 0, 40, None, false),
        (40006, PROTO_UDP, CT_F_REPLIED, 40, None, true),
    ];
    let mut keys = Vec::new();
    for (port, proto, flags, ago, reply_ago, _) in cases {
        let key = tuple(("198.51.100.7", port), vip, proto);
        let ct = flow(flags, ago, 61000 + port % 100);
        dp.maps.flows(proto).ct.insert(key, ct, 0).expect("ct");
        let rkey = reply_key(&key, &ct);
        if let Some(r) = reply_ago {
            let rn = RevNat4 {
                saddr: key.daddr,
                daddr: key.saddr,
                sport: key.dport,
                dport: key.sport,
                last_seen_ns: now - r * NS,
                ..Default::default()
            };
            dp.maps.flows(proto).rnat.insert(rkey, rn, 0).expect("rnat");
        }
        keys.push((key, rkey));
    }
    // An expired flow whose SNAT port the datapath has handed to another client: the entry at
    // its reply key is the other flow's now.
    let gone = tuple(("198.51.100.7", 40007), vip, PROTO_TCP);
    let gone_ct = flow(0, 61, 61099);
    dp.maps.tcp_flows.ct.insert(gone, gone_ct, 0).expect("ct");
    let taken_over = RevNat4 {
        saddr: ip("10.96.0.10"),
        daddr: ip("198.51.100.8"),
        sport: 80u16.to_be(),
        dport: 40007u16.to_be(),
        last_seen_ns: now,
        ..Default::default()
    };
    let gone_rkey = reply_key(&gone, &gone_ct);
    dp.maps
        .tcp_flows
        .rnat
        .insert(gone_rkey, taken_over, 0)
        .expect("rnat");

    // Reply entries whose flow is gone (evicted from a full table): past TIME_WAIT one goes,
    // within it one stays (it still guards its SNAT port); an orphan marked established is not
    // kept for 24 h.
    let mut orphan = |port: u16, flags, ago: u64| {
        let rkey = tuple(("10.244.1.7", 8080), ("192.0.2.10", port), PROTO_TCP);
        let rn = RevNat4 {
            saddr: ip("10.244.1.7"),
            daddr: ip("192.0.2.10"),
            sport: 8080u16.to_be(),
            dport: port.to_be(),
            flags,
            last_seen_ns: now - ago * NS,
            ..Default::default()
        };
        dp.maps.tcp_flows.rnat.insert(rkey, rn, 0).expect("orphan");
        rkey
    };
    let old_orphan = orphan(62001, CT_F_ESTABLISHED | CT_F_SNAT, 200);
    let young_orphan = orphan(62002, CT_F_ESTABLISHED | CT_F_CLOSING | CT_F_SNAT, 30);

    // More live flows than one batch read returns (4096): the walk goes on past the first.
    let extra = 5000u32;
    for n in 0..extra {
        let key = Tuple4 {
            saddr: ip("203.0.113.0") + n.to_be(),
            ..tuple(("0.0.0.0", 50000), vip, PROTO_TCP)
        };
        let ct = flow(CT_F_ESTABLISHED, 1, 0);
        dp.maps.tcp_flows.ct.insert(key, ct, 0).expect("ct");
    }

    let mut collector = Collector::open(dp.layout()).expect("collector");
    let got = collector.collect(monotonic_ns()).expect("collect");
    assert_eq!(got.removed, 4, "{got:?}");
    assert_eq!(got.orphans, 1, "{got:?}");
    assert!(
        dp.maps.tcp_flows.rnat.get(&old_orphan, 0).is_err(),
        "old orphan"
    );
    assert!(
        dp.maps.tcp_flows.rnat.get(&young_orphan, 0).is_ok(),
        "young orphan"
    );
    assert!(dp.maps.tcp_flows.ct.get(&gone, 0).is_err(), "expired flow");
    assert_eq!(
        dp.maps.tcp_flows.rnat.get(&gone_rkey, 0).ok(),
        Some(taken_over),
        "the port's new flow keeps its reply entry"
    );
    assert_eq!(
        got.live.get("ESTABLISHED"),
        Some(&(1 + u64::from(extra))),
        "{got:?}"
    );
    assert_eq!(got.live.get("UDP"), Some(&2), "{got:?}");
    for ((key, rkey), case) in keys.iter().zip(cases) {
        let kept = case.5;
        assert_eq!(
            dp.maps.flows(case.1).ct.get(key, 0).is_ok(),
            kept,
            "flow from port {}",
            case.0
        );
        if case.4.is_some() {
            assert_eq!(
                dp.maps.flows(case.1).rnat.get(rkey, 0).is_ok(),
                kept,
                "reply of {}",
                case.0
            );
        }
    }
}
