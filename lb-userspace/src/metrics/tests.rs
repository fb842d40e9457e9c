//! Rendering the metrics from recorded syncs and from datapath counters given, and the health
//! endpoints' replies.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    time::Duration,
};

use lb_common::{
    Backend4, Backend6, Counters, Frontend4, Frontend4Key, Frontend6Key, Service, SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
};

use axum::http::StatusCode;

use super::*;
use crate::{
    dataplane::reconcile::ProgrammedSet,
    model::{
        Backend, BackendSet, Frontend, FrontendKey, Kind, ObjectRef, Policy, Protocol, Scope,
        SetKey, Verdict,
    },
};

const CAPS: Capacities = Capacities {
    frontends: 16,
    services: 8,
    slots: 32,
    backends: 4,
    ct: 64,
    ct_any: 32,
};

fn set_key() -> SetKey {
    SetKey {
        service: ObjectRef::new("shop", "web"),
        port_name: "http".into(),
        proto: Protocol::Tcp,
        policy: Policy::Cluster,
    }
}

fn desired() -> Desired {
    let mut d = Desired::default();
    let be = |ip: [u8; 4]| Backend {
        ip: Ipv4Addr::from(ip),
        port: 8080,
        local: true,
        terminating: false,
    };
    d.sets.insert(
        set_key(),
        BackendSet {
            backends: vec![be([10, 244, 1, 5]), be([10, 244, 1, 7])],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            verdict: Verdict::Reject,
        },
    );
    for scope in [Scope::External, Scope::Internal] {
        let key = FrontendKey {
            ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: Protocol::Tcp,
            scope,
        };
        let fe = Frontend {
            set: set_key(),
            kind: Kind::ClusterIp,
            source_ranges: None,
        };
        d.frontends.insert(key, fe);
    }
    d
}

/// Records a sync of [`desired`] and [`programmed`] (IPv4 only).
fn record(m: &Metrics, report: &Report, latency: Duration, problems: &BTreeSet<Problem>) {
    let (d, p) = (desired(), programmed());
    let (d6, p6) = (Desired::default(), Programmed::default());
    let synced = Synced {
        desired: &d,
        desired6: &d6,
        programmed: &p,
        programmed6: &p6,
    };
    m.record_sync(report, latency, &synced, problems);
}

fn programmed() -> Programmed {
    let mut p = Programmed::default();
    for (scope, stats_id) in [(SCOPE_EXTERNAL, 1), (SCOPE_INTERNAL, 2)] {
        let key = Frontend4Key {
            addr: u32::from_ne_bytes([10, 96, 0, 10]),
            port: 80u16.to_be(),
            proto: lb_common::PROTO_TCP,
            scope,
        };
        let fe = Frontend4 {
            service_id: 7,
            stats_id,
            kind: lb_common::KIND_CLUSTER_IP,
            flags: 0,
            _pad: [0; 2],
        };
        p.frontends.insert(key, fe);
    }
    let set = ProgrammedSet {
        key: Some(set_key()),
        service: Service {
            backend_count: 0,
            affinity_timeout: 0,
            flags: 0,
            verdict: 0,
            _pad: [0; 2],
        },
        slots: vec![1, 2],
    };
    p.sets = HashMap::from([(7, set)]);
    for id in [1, 2] {
        let be = Backend4 {
            addr: 0,
            port: 0,
            flags: 0,
            _pad: 0,
        };
        p.backends.insert(id, be);
    }
    p
}

fn problem(name: &str) -> Problem {
    Problem {
        object: format!("Service shop/{name}"),
        field: "spec.ports[0].port".into(),
        message: "out of range".into(),
    }
}

/// The value of the sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn an_interface_has_one_mode_series_until_let_go() {
    let m = Metrics::new(None, CAPS, Duration::from_secs(20));
    // Sorted: a Family renders in hash order.
    let series = |m: &Metrics| -> Vec<String> {
        let mut lines: Vec<String> = m
            .render()
            .lines()
            .filter(|l| l.starts_with("lb_interface_xdp_mode{"))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    m.set_interface("eth0", Some("native"));
    m.set_interface("eth0", Some("generic"));
    m.set_interface("eth1", Some("native"));
    assert_eq!(
        series(&m),
        [
            "lb_interface_xdp_mode{interface=\"eth0\",mode=\"generic\"} 1",
            "lb_interface_xdp_mode{interface=\"eth1\",mode=\"native\"} 1",
        ]
    );
    m.set_interface("eth0", None);
    assert_eq!(
        series(&m),
        ["lb_interface_xdp_mode{interface=\"eth1\",mode=\"native\"} 1"]
    );
}

#[test]
fn renders_sync_metrics() {
    let m = Metrics::new(None, CAPS, Duration::from_secs(20));
    let text = m.render();
    assert_eq!(sample(&text, "lb_syncs_total "), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "lb_map_capacity{map=\"LB4_FRONTENDS\"} "),
        Some(16.0)
    );
    assert!(text.ends_with("# EOF\n"));

    let report = Report {
        frontends_written: 2,
        refused: vec![(ObjectRef::new("shop", "big"), map_names::BACKENDS4)],
        errors: vec!["backend 3: boom".into()],
        ..Default::default()
    };
    let problems = BTreeSet::from([problem("a"), problem("b")]);
    record(&m, &report, Duration::from_millis(3), &problems);
    // The same problems again count once; one new one counts.
    let problems = BTreeSet::from([problem("a"), problem("b"), problem("c")]);
    record(&m, &Report::default(), Duration::ZERO, &problems);
    let text = m.render();
    for (prefix, want) in [
        ("lb_syncs_total ", 2.0),
        ("lb_sync_errors_total{kind=\"map_write\"} ", 1.0),
        ("lb_sync_errors_total{kind=\"refused_service\"} ", 1.0),
        ("lb_sync_errors_total{kind=\"invalid_object\"} ", 3.0),
        ("lb_programming_latency_seconds_count ", 1.0),
        ("lb_programming_latency_seconds_bucket{le=\"0.004\"} ", 1.0),
        ("lb_programming_latency_seconds_bucket{le=\"0.002\"} ", 0.0),
        ("lb_frontends ", 2.0),
        ("lb_backends ", 2.0),
        ("lb_backend_sets ", 1.0),
        ("lb_invalid_objects ", 3.0),
        ("lb_map_entries{map=\"LB4_FRONTENDS\"} ", 2.0),
        ("lb_map_entries{map=\"LB_SLOTS\"} ", 2.0),
        ("lb_map_entries{map=\"LB4_BACKENDS\"} ", 2.0),
        ("lb_map_capacity{map=\"LB_SLOTS\"} ", 32.0),
    ] {
        assert_eq!(sample(&text, prefix), Some(want), "{prefix}\n{text}");
    }
    assert!(text.contains("# TYPE lb_programming_latency_seconds histogram"));
    assert!(!text.contains("lb_frontend_packets"), "no datapath: {text}");

    let mut collected = crate::dataplane::conntrack::Collected::default();
    collected.live.insert("ESTABLISHED", 5);
    collected.removed = 2;
    collected.orphans = 1;
    m.record_conntrack(&collected);
    m.record_conntrack(&collected);
    let text = m.render();
    for (prefix, want) in [
        ("lb_conntrack_capacity ", 64.0),
        ("lb_conntrack_udp_capacity ", 32.0),
        ("lb_conntrack_flows{state=\"ESTABLISHED\"} ", 5.0),
        ("lb_conntrack_flows{state=\"UDP\"} ", 0.0),
        ("lb_conntrack_collected_total ", 4.0),
        ("lb_conntrack_orphans_collected_total ", 2.0),
    ] {
        assert_eq!(sample(&text, prefix), Some(want), "{prefix}\n{text}");
    }
}

/// IPv6 frontends count in the gauges beside IPv4 ones, fill their own maps' series, and get
/// their own per-frontend series (the address in brackets).
#[test]
fn ipv6_frontends_are_counted_beside_ipv4() {
    let m = Metrics::new(None, CAPS, Duration::from_secs(20));
    let (d, p) = (desired(), programmed());
    let mut p6 = Programmed::<std::net::Ipv6Addr>::default();
    let key = Frontend6Key {
        addr: "fd00::10".parse::<std::net::Ipv6Addr>().unwrap().kernel(),
        port: 80u16.to_be(),
        proto: lb_common::PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    };
    let fe = Frontend4 {
        service_id: 1 << 30,
        stats_id: 3,
        kind: lb_common::KIND_CLUSTER_IP,
        flags: 0,
        _pad: [0; 2],
    };
    p6.frontends.insert(key, fe);
    let set = p.sets[&7].clone();
    p6.sets.insert(1 << 30, set);
    p6.backends.insert((1 << 30) + 1, Backend6::default());
    let synced = Synced {
        desired: &d,
        desired6: &Desired::default(),
        programmed: &p,
        programmed6: &p6,
    };
    m.record_sync(
        &Report::default(),
        Duration::ZERO,
        &synced,
        &BTreeSet::new(),
    );
    let text = m.render();
    for (prefix, want) in [
        ("lb_backends ", 3.0),
        ("lb_map_entries{map=\"LB4_FRONTENDS\"} ", 2.0),
        ("lb_map_entries{map=\"LB6_FRONTENDS\"} ", 1.0),
        ("lb_map_entries{map=\"LB_SERVICES\"} ", 2.0),
        ("lb_map_entries{map=\"LB_SLOTS\"} ", 4.0),
        ("lb_map_entries{map=\"LB6_BACKENDS\"} ", 1.0),
        ("lb_map_capacity{map=\"LB6_FRONTENDS\"} ", 16.0),
    ] {
        assert_eq!(sample(&text, prefix), Some(want), "{prefix}\n{text}");
    }
    let series = frontend_series(&p6);
    assert_eq!(
        series[0].labels[2],
        ("frontend", "[fd00::10]:80/TCP".into())
    );
    assert_eq!(series[0].stats_id, 3);
}

#[test]
fn renders_datapath_counters_per_service_and_per_frontend_when_asked() {
    let m = Metrics::with_series(None, CAPS, Duration::from_secs(20), true);
    let series = frontend_series(&programmed());
    assert_eq!(series.len(), 2);
    assert_eq!(
        series[0].labels,
        vec![
            ("service", "shop/web".to_string()),
            ("port_name", "http".into()),
            ("frontend", "10.96.0.10:80/TCP".into()),
            ("kind", "ClusterIP".into()),
            ("scope", "external".into()),
        ]
    );
    let dp = Datapath {
        frontends: vec![
            (
                series[0].clone(),
                Counters {
                    packets: 5,
                    bytes: 300,
                },
            ),
            (
                series[1].clone(),
                Counters {
                    packets: 1,
                    bytes: 60,
                },
            ),
        ],
        events: BTreeMap::from([("ct_new", 4), ("reject_no_backend", 0)]),
        xmit_drops: vec![("eth0".into(), 7)],
    };
    let text = m.render_with(Some(&dp));
    let labels = "service=\"shop/web\",port_name=\"http\",frontend=\"10.96.0.10:80/TCP\",\
                      kind=\"ClusterIP\"";
    for (prefix, want) in [
        (
            format!("lb_frontend_packets_total{{{labels},scope=\"external\"}} "),
            5.0,
        ),
        (
            format!("lb_frontend_packets_total{{{labels},scope=\"internal\"}} "),
            1.0,
        ),
        (
            format!("lb_frontend_bytes_total{{{labels},scope=\"external\"}} "),
            300.0,
        ),
        (
            "lb_service_packets_total{service=\"shop/web\"} ".into(),
            6.0,
        ),
        (
            "lb_service_bytes_total{service=\"shop/web\"} ".into(),
            360.0,
        ),
        ("lb_datapath_events_total{event=\"ct_new\"} ".into(), 4.0),
        (
            "lb_datapath_events_total{event=\"reject_no_backend\"} ".into(),
            0.0,
        ),
        (
            "lb_xdp_transmit_drops_total{interface=\"eth0\"} ".into(),
            7.0,
        ),
    ] {
        assert_eq!(sample(&text, &prefix), Some(want), "{prefix}\n{text}");
    }
    assert_eq!(text.matches("# EOF").count(), 1);
}

/// By default traffic is exported per service only: at 50,000 services of four frontend entries
/// each (ClusterIP and NodePort, two scopes), the exposition stays under 10 MiB (per frontend it
/// would be 400,000 series more).
#[test]
fn metrics_are_bounded_by_default_at_50k_services() {
    let services = 50_000;
    let mut frontends = Vec::with_capacity(services * 4);
    for n in 0..services {
        for (frontend, scope) in [
            ("10.96.0.1:80/TCP", "external"),
            ("10.96.0.1:80/TCP", "internal"),
        ]
        .into_iter()
        .chain([
            ("192.0.2.10:30080/TCP", "external"),
            ("192.0.2.10:30080/TCP", "internal"),
        ]) {
            let labels = vec![
                ("service", format!("namespace-{n}/service-{n}")),
                ("port_name", "http".into()),
                ("frontend", frontend.into()),
                ("kind", "NodePort".into()),
                ("scope", scope.into()),
            ];
            let series = FrontendSeries {
                labels,
                stats_id: frontends.len() as u32,
            };
            let counters = Counters {
                packets: 1_234_567,
                bytes: 1_234_567_890,
            };
            frontends.push((series, counters));
        }
    }
    let dp = Datapath {
        frontends,
        ..Default::default()
    };
    let text = Metrics::new(None, CAPS, Duration::from_secs(20)).render_with(Some(&dp));
    let lines = text
        .lines()
        .filter(|l| l.starts_with("lb_service_packets_total"))
        .count();
    assert_eq!(lines, services);
    assert!(!text.contains("lb_frontend_"));
    assert!(text.len() < 10 << 20, "{} bytes", text.len());
    let all = Metrics::with_series(None, CAPS, Duration::from_secs(20), true);
    let per_frontend = all.render_with(Some(&dp));
    assert!(
        per_frontend.len() > 5 * text.len(),
        "{} bytes",
        per_frontend.len()
    );
}

#[test]
fn healthz_follows_syncs() {
    let m = Metrics::new(None, CAPS, Duration::from_secs(20));
    assert_eq!(
        healthz_reply(m.proxy_health().status()).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let failed = Report {
        errors: vec!["boom".into()],
        ..Default::default()
    };
    let none = BTreeSet::new();
    record(&m, &failed, Duration::ZERO, &none);
    assert!(
        !m.proxy_health().is_healthy(),
        "a failed sync is not an update"
    );
    record(&m, &Report::default(), Duration::ZERO, &none);
    assert_eq!(
        healthz_reply(m.proxy_health().status()),
        (StatusCode::OK, "ok".to_string())
    );
    let stale = Metrics::new(None, CAPS, Duration::ZERO);
    record(&stale, &Report::default(), Duration::ZERO, &none);
    assert_eq!(
        healthz_reply(stale.proxy_health().status()).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_metrics_healthz_and_livez() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let m = Metrics::new(None, CAPS, Duration::from_secs(20));
    tokio::spawn(serve_on(listener, m.clone()));
    let get_from = |addr: std::net::SocketAddr, path: &'static str| {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    };
    let get = |path: &'static str| get_from(addr, path);
    let status = |reply: &str| reply.split(' ').nth(1).unwrap_or_default().to_string();
    assert_eq!(status(&get("/livez").await.unwrap()), "200");
    assert_eq!(status(&get("/healthz").await.unwrap()), "503");
    let none = BTreeSet::new();
    record(&m, &Report::default(), Duration::ZERO, &none);
    let healthz = get("/healthz").await.unwrap();
    assert_eq!(status(&healthz), "200");
    assert!(healthz.ends_with("\r\n\r\nok"), "{healthz}");
    let metrics = get("/metrics").await.unwrap();
    assert_eq!(status(&metrics), "200", "{metrics}");
    assert!(metrics.contains(CONTENT_TYPE), "{metrics}");
    assert!(metrics.contains("\nlb_syncs_total 1\n"), "{metrics}");

    // Ten scrapers at once: they take turns, and those within a second of a rendering share it
    // (one reading of the kernel's counters, one exposition in memory, however many ask).
    let before = (m.renders(), std::time::Instant::now());
    let scrapes: Vec<_> = (0..10).map(|_| get("/metrics")).collect();
    for s in scrapes {
        assert_eq!(status(&s.await.unwrap()), "200");
    }
    let rendered = m.renders() - before.0;
    let seconds = before.1.elapsed().as_secs();
    assert!(
        rendered <= 1 + seconds,
        "{rendered} renderings in {seconds} s"
    );

    // A loop that stopped turning: /livez fails (a zero health timeout makes any turn old).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_addr = listener.local_addr().unwrap();
    let stalled = Metrics::new(None, CAPS, Duration::ZERO);
    tokio::spawn(serve_on(listener, stalled.clone()));
    stalled.liveness().turned();
    let reply = get_from(stalled_addr, "/livez").await.unwrap();
    assert_eq!(status(&reply), "503", "{reply}");
    assert!(reply.contains("control loop has not turned"), "{reply}");
}
