//! lbctl against real pinned maps: services programmed through the reconciler from manifests,
//! conntrack, reverse-NAT, affinity entries and counters written directly, then the lbctl binary
//! run with `-o json` for every command and its fields checked one by one; a golden file of the
//! `services` table; and the errors a person meets (no pin path, another lb version, ABI
//! mismatch, permission denied).
//!
//! `LB_UPDATE_GOLDEN=1 cargo test -p lb-tests --test lbctl` rewrites tests/testdata/lbctl/ (review
//! the diff before committing it).
use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use aya::maps::PerCpuValues;
use lb::{
    dataplane::{maps::entries, reconcile::Reconciler, view, Capacities, Dataplane, Maps, Options},
    model::{desired, NodeContext},
    source::manifests::objects_of,
};
use lb_common::{
    stat, Affinity, AffinityKey4, Config, Counters, Ct4, RevNat4, Tuple4, CT_F_CLOSING,
    CT_F_ESTABLISHED, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT, PROTO_TCP, PROTO_UDP,
};
use lb_tests::{
    clock::monotonic_ns_after,
    lab::{require_privileged, Lab},
    topology::lbctl_bin,
};
use serde_json::{json, Value};

const NS: u64 = 1_000_000_000;

/// web: ClusterIP + NodePort, one local and one remote endpoint. front: LoadBalancer with
/// externalTrafficPolicy Local. dns: UDP with ClientIP affinity, only a terminating endpoint.
/// empty: no endpoints (rejects).
const MANIFESTS: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.5], nodeName: node-a}
- {addresses: [10.244.2.7], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: https, port: 443, targetPort: 8443, nodePort: 30443}]
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.7}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: front-1, namespace: shop, labels: {kubernetes.io/service-name: front}}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints:
- {addresses: [10.244.1.9], nodeName: node-a}
- {addresses: [10.244.2.9], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: shop}
spec:
  clusterIP: 10.96.0.53
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: shop, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}]
endpoints:
- addresses: [10.244.1.10]
  nodeName: node-a
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec: {clusterIP: 10.96.0.99, ports: [{port: 80}]}
";

fn wire(ip: &str) -> u32 {
    u32::from_ne_bytes(ip.parse::<Ipv4Addr>().unwrap().octets())
}

fn tuple(saddr: &str, sport: u16, daddr: &str, dport: u16, proto: u8) -> Tuple4 {
    Tuple4 {
        saddr: wire(saddr),
        daddr: wire(daddr),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn run(pin: &Path, args: &[&str]) -> Output {
    let bin = lbctl_bin().expect("lbctl binary");
    Command::new(&bin)
        .arg("--pin-path")
        .arg(pin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

/// `lbctl -o json ARGS`, parsed.
fn json_of(pin: &Path, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = run(pin, &all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lbctl {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lbctl {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn table_of(pin: &Path, args: &[&str]) -> String {
    let out = run(pin, args);
    assert!(
        out.status.success(),
        "lbctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// An lbctl run that must fail: its exit code and message.
fn failure(pin: &Path, args: &[&str]) -> (i32, String) {
    let out = run(pin, args);
    assert!(!out.status.success(), "lbctl {args:?} should fail: {out:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout when failing");
    (
        out.status.code().expect("exit code, not a signal"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn find(rows: &Value, pred: impl Fn(&Value) -> bool) -> &Value {
    let all = rows.as_array().expect("array");
    let found: Vec<&Value> = all.iter().filter(|r| pred(r)).collect();
    assert_eq!(found.len(), 1, "exactly one match in {rows:#}");
    found[0]
}

fn frontend_is(row: &Value, ip: &str, port: u16) -> bool {
    row["frontend"]["ip"] == ip && row["frontend"]["port"] == port
}

/// A `stats` row: per kernel frontend entry, so per scope too.
fn scope_is(row: &Value, ip: &str, port: u16, scope: &str) -> bool {
    frontend_is(row, ip, port) && row["frontend"]["scope"] == scope
}

/// Whether `v` is in `lo..=hi`, a range whose width is the time the test may take between
/// writing an entry and lbctl reading it. Where every step is slower (`LB_TEST_TIME_SCALE`, a VM
/// under emulation, where 13 s have been seen) the range widens by as much more on both sides:
/// ages grow and remaining times shrink with the delay.
fn in_range(v: &Value, lo: u64, hi: u64) -> bool {
    let width = Duration::from_secs(hi - lo);
    let extra = lb_tests::lab::scaled(width).saturating_sub(width).as_secs();
    v.as_u64()
        .is_some_and(|n| (lo.saturating_sub(extra)..=hi + extra).contains(&n))
}

/// What the test wrote besides the reconciler, for the assertions.
struct Ids {
    backend: std::collections::HashMap<String, u32>,
    web_clusterip_stats: u32,
    dns_set: u32,
    cpus: usize,
}

fn program(dp: &mut Dataplane) -> Ids {
    let node = NodeContext::<Ipv4Addr> {
        name: "node-a".into(),
        nodeport_addrs: vec!["192.0.2.10".parse().unwrap()],
    };
    let want = desired(&objects_of(MANIFESTS).expect("manifests"), &node);
    assert!(want.problems.is_empty(), "{:?}", want.problems);
    let caps = Capacities::read(dp.layout()).expect("capacities");
    let mut rec = Reconciler::adopt(&dp.maps, caps).expect("adopt");
    let report = rec.apply(&mut dp.maps, &want);
    assert!(
        report.errors.is_empty() && report.refused.is_empty(),
        "{report:?}"
    );

    let maps = &mut dp.maps;
    let backend = entries(&maps.v4.backends)
        .expect("backends")
        .into_iter()
        .map(|(id, b)| {
            let ip = Ipv4Addr::from(b.addr.to_ne_bytes());
            (format!("{ip}:{}", u16::from_be(b.port)), id)
        })
        .collect::<std::collections::HashMap<_, _>>();
    let views = view::frontends(maps).expect("view");
    let row = |ip: &str, port: u16, scope: &str| {
        views
            .iter()
            .find(|v| {
                v.frontend.ip.to_string() == ip
                    && v.frontend.port == port
                    && v.frontend.scope == scope
            })
            .unwrap_or_else(|| panic!("no frontend {ip}:{port} {scope}"))
    };
    let web_np = row("192.0.2.10", 30080, "external");
    let web_cip_int = row("10.96.0.10", 80, "internal");
    let front_cip_int = row("10.96.0.20", 443, "internal");
    let dns = row("10.96.0.53", 53, "internal");
    // The oldest entry below, an expired affinity entry, was last used 700 s ago.
    let now = monotonic_ns_after(Duration::from_secs(700));

    // An outside client through the NodePort to the remote backend: SNATed, established.
    let flags = CT_F_EXTERNAL | CT_F_SNAT | CT_F_ESTABLISHED;
    let ct = |service: &view::FrontendRow, be: &str, flags, created_ago, seen_ago| {
        let (addr, port) = be.split_once(':').unwrap();
        Ct4 {
            backend_id: backend[be],
            service_id: service.service_id,
            stats_id: service.stats_id,
            backend_addr: wire(addr),
            backend_port: port.parse::<u16>().unwrap().to_be(),
            flags,
            created_ns: now - created_ago * NS,
            last_seen_ns: now - seen_ago * NS,
            ..Default::default()
        }
    };
    let mut nodeport = ct(web_np, "10.244.2.7:8080", flags, 125, 5);
    nodeport.snat_addr = wire("192.0.2.10");
    nodeport.snat_port = 61000u16.to_be();
    let key = tuple("198.51.100.2", 40000, "192.0.2.10", 30080, PROTO_TCP);
    maps.tcp_flows.ct.insert(key, nodeport, 0).expect("ct");
    let reply = tuple("10.244.2.7", 8080, "192.0.2.10", 61000, PROTO_TCP);
    let rn = RevNat4 {
        saddr: wire("192.0.2.10"),
        daddr: wire("198.51.100.2"),
        sport: 30080u16.to_be(),
        dport: 40000u16.to_be(),
        flags,
        _pad: [0; 3],
        last_seen_ns: now - 2 * NS,
    };
    maps.tcp_flows.rnat.insert(reply, rn, 0).expect("rnat");

    // A pod reaching itself through the ClusterIP: hairpin, SNATed to the hairpin address, no
    // reply seen yet (and no reverse entry).
    let mut hairpin = ct(
        web_cip_int,
        "10.244.1.5:8080",
        CT_F_HAIRPIN | CT_F_SNAT,
        3,
        3,
    );
    hairpin.snat_addr = wire("169.254.42.1");
    hairpin.snat_port = 61001u16.to_be();
    let key = tuple("10.244.1.5", 50000, "10.96.0.10", 80, PROTO_TCP);
    maps.tcp_flows.ct.insert(key, hairpin, 0).expect("ct");

    // A pod to the LoadBalancer service's ClusterIP, closing.
    let closing = ct(
        front_cip_int,
        "10.244.1.9:8443",
        CT_F_ESTABLISHED | CT_F_CLOSING,
        30,
        1,
    );
    let key = tuple("10.244.1.5", 41000, "10.96.0.20", 443, PROTO_TCP);
    maps.tcp_flows.ct.insert(key, closing, 0).expect("ct");
    let reply = tuple("10.244.1.9", 8443, "10.244.1.5", 41000, PROTO_TCP);
    let rn = RevNat4 {
        saddr: wire("10.96.0.20"),
        daddr: wire("10.244.1.5"),
        sport: 443u16.to_be(),
        dport: 41000u16.to_be(),
        flags: CT_F_ESTABLISHED | CT_F_CLOSING,
        _pad: [0; 3],
        last_seen_ns: now - NS,
    };
    maps.tcp_flows.rnat.insert(reply, rn, 0).expect("rnat");

    // UDP to the affinity service.
    let udp = ct(dns, "10.244.1.10:53", 0, 20, 20);
    let key = tuple("10.244.1.5", 5353, "10.96.0.53", 53, PROTO_UDP);
    maps.other_flows.ct.insert(key, udp, 0).expect("ct");

    // Affinity: one live entry, one expired, one whose backend is gone.
    let aff = |client: &str, backend_id, ago: u64| {
        (
            AffinityKey4 {
                service_id: dns.service_id,
                client: wire(client),
            },
            Affinity {
                backend_id,
                backend_addr: wire("10.244.1.10"),
                last_used_ns: now - ago * NS,
                backend_port: 53u16.to_be(),
                _pad: [0; 6],
            },
        )
    };
    for (k, v) in [
        aff("10.244.1.5", backend["10.244.1.10:53"], 100),
        aff("10.244.1.6", backend["10.244.1.10:53"], 700),
        aff("10.244.1.7", 999_999, 10),
    ] {
        maps.v4.affinity.insert(k, v, 0).expect("affinity");
    }

    // Counters: every CPU counted 10 packets / 1500 bytes on web's ClusterIP (external), 2
    // rejects and 1 local-policy drop; CPU 0 also 3 fragment drops.
    let cpus = aya::util::nr_cpus().expect("nr_cpus");
    let web_cip_ext = row("10.96.0.10", 80, "external");
    let per_cpu = |c: Counters| PerCpuValues::try_from(vec![c; cpus]).unwrap();
    maps.frontend_stats
        .set(
            web_cip_ext.stats_id,
            per_cpu(Counters {
                packets: 10,
                bytes: 1500,
            }),
            0,
        )
        .expect("frontend stats");
    let global = |v: u64| PerCpuValues::try_from(vec![v; cpus]).unwrap();
    maps.global_stats
        .set(stat::REJECT_NO_BACKEND, global(2), 0)
        .expect("stats");
    maps.global_stats
        .set(stat::DROP_NO_LOCAL_BACKEND, global(1), 0)
        .expect("stats");
    // The socket hooks translated 4 connect() calls per CPU for the same frontend, and run in
    // host mode on a cgroup.
    maps.sock_stats
        .set(web_cip_ext.stats_id, global(4), 0)
        .expect("socket stats");
    let mut sock = lb_common::SockConfig {
        mode: lb_common::SOCK_LB_HOST,
        cgroup_id: 4242,
        ..Default::default()
    };
    sock.cgroup_path[..14].copy_from_slice(b"/sys/fs/cgroup");
    maps.set_sock_config(&sock).expect("socket config");
    let mut frags = vec![0u64; cpus];
    frags[0] = 3;
    maps.global_stats
        .set(
            stat::DROP_FRAGMENT,
            PerCpuValues::try_from(frags).unwrap(),
            0,
        )
        .expect("stats");

    Ids {
        backend,
        web_clusterip_stats: web_cip_ext.stats_id,
        dns_set: dns.service_id,
        cpus,
    }
}

#[test]
fn lbctl_shows_what_the_maps_hold() {
    if !require_privileged("lbctl") {
        return;
    }
    let lab = Lab::new("lbctl").expect("lab");
    let pin = lab.pin_path("node");
    let mut dp = Dataplane::open(&Options {
        pin_path: pin.clone(),
        capacities: vec![],
    })
    .expect("dataplane");
    let ids = program(&mut dp);

    check_services(&pin);
    check_backends(&pin, &ids);
    check_conntrack(&pin, &ids);
    check_affinity(&pin, &ids);
    check_stats(&pin, &ids, &mut dp.maps);
    check_golden(&pin);
    for cmd in ["backends", "conntrack", "affinity", "stats"] {
        println!("$ lbctl {cmd}\n{}", table_of(&pin, &[cmd]));
    }

    // The maps of an lb with another ABI version are refused, not misread.
    let mut config = dp.maps.config().expect("config");
    let ours = config.abi_version;
    config.abi_version = ours + 6;
    dp.maps.set_config(&config).expect("set config");
    let (code, msg) = failure(&pin, &["services"]);
    dp.maps
        .set_config(&Config {
            abi_version: ours,
            ..config
        })
        .expect("restore config");
    assert_eq!(code, 1);
    assert!(
        msg.contains(&format!("ABI version {}", ours + 6)) && msg.contains("this lbctl"),
        "{msg}"
    );

    check_permission_denied(&pin);
}

fn check_services(pin: &Path) {
    let rows = json_of(pin, &["services"]);
    // One entry per frontend: web 2, front 3, dns 1, empty 1.
    assert_eq!(rows.as_array().unwrap().len(), 7, "{rows:#}");

    let web_cip = find(&rows, |r| frontend_is(r, "10.96.0.10", 80));
    assert_eq!(web_cip["service"], "shop/web");
    assert_eq!(web_cip["port_name"], "http");
    assert_eq!(web_cip["frontend"]["protocol"], "TCP");
    assert_eq!(web_cip["frontend"]["kind"], "ClusterIP");
    assert_eq!(
        web_cip["backends"],
        json!([
            {"ip": "10.244.1.5", "port": 8080, "local": true, "terminating": false},
            {"ip": "10.244.2.7", "port": 8080, "local": false, "terminating": false},
        ])
    );
    assert_eq!(web_cip["session_affinity_timeout"], Value::Null);
    assert_eq!(web_cip["external_traffic_local"], false);
    assert_eq!(web_cip["internal_traffic_local"], false);
    assert!(web_cip["service_id"].is_u64() && web_cip["stats_id"].is_u64());

    // NodePort: once per node address (one here).
    let web_np = find(&rows, |r| frontend_is(r, "192.0.2.10", 30080));
    assert_eq!(web_np["service"], "shop/web");
    assert_eq!(web_np["frontend"]["kind"], "NodePort");
    assert_eq!(web_np["backends"].as_array().unwrap().len(), 2);

    // eTP=Local: from outside only the local endpoint; from pods every endpoint.
    let lb_ext = find(&rows, |r| frontend_is(r, "203.0.113.7", 443));
    assert_eq!(lb_ext["service"], "shop/front");
    assert_eq!(lb_ext["port_name"], "https");
    assert_eq!(lb_ext["frontend"]["kind"], "LoadBalancer");
    assert_eq!(lb_ext["frontend"]["protocol"], "TCP");
    assert_eq!(lb_ext["external_traffic_local"], true);
    assert_eq!(lb_ext["internal_traffic_local"], false);
    assert_eq!(
        lb_ext["backends"],
        json!([{"ip": "10.244.1.9", "port": 8443, "local": true, "terminating": false}])
    );
    assert_eq!(lb_ext["when_empty"], "drop");
    assert_eq!(lb_ext["pod_backends"].as_array().unwrap().len(), 2);
    assert!(
        web_np.get("pod_backends").is_none(),
        "same set for pods: not repeated"
    );
    let front_np = find(&rows, |r| frontend_is(r, "192.0.2.10", 30443));
    assert_eq!(front_np["frontend"]["kind"], "NodePort");
    assert_eq!(front_np["external_traffic_local"], true);

    // Affinity, UDP, a terminating endpoint used because it is the only one serving.
    let dns = find(&rows, |r| frontend_is(r, "10.96.0.53", 53));
    assert_eq!(dns["service"], "shop/dns");
    assert_eq!(dns["port_name"], "dns");
    assert_eq!(dns["frontend"]["protocol"], "UDP");
    assert_eq!(dns["frontend"]["kind"], "ClusterIP");
    assert_eq!(dns["session_affinity_timeout"], 600);
    assert_eq!(
        dns["backends"],
        json!([{"ip": "10.244.1.10", "port": 53, "local": true, "terminating": true}])
    );

    // No endpoints at all: rejects. An unnamed port has an empty port name.
    let empty = find(&rows, |r| frontend_is(r, "10.96.0.99", 80));
    assert_eq!(empty["service"], "shop/empty");
    assert_eq!(empty["port_name"], "");
    assert_eq!(empty["backends"], json!([]));
    assert_eq!(empty["when_empty"], "reject");

    // Sorted by service, port name, frontend: stable across runs.
    let order: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r["service"], r["frontend"]["ip"]))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    // `-o` works after the command too.
    let out = run(pin, &["services", "-o", "json"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), rows);
}

fn check_backends(pin: &Path, ids: &Ids) {
    let rows = json_of(pin, &["backends"]);
    assert_eq!(rows.as_array().unwrap().len(), 5, "{rows:#}");
    let ips: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ip"].as_str().unwrap())
        .collect();
    assert_eq!(
        ips,
        [
            "10.244.1.5",
            "10.244.1.9",
            "10.244.1.10",
            "10.244.2.7",
            "10.244.2.9"
        ],
        "sorted by address"
    );
    let local = find(&rows, |r| r["ip"] == "10.244.1.9");
    assert_eq!(local["id"], ids.backend["10.244.1.9:8443"]);
    assert_eq!(local["port"], 8443);
    assert_eq!(local["local"], true);
    assert_eq!(local["terminating"], false);
    assert_eq!(
        local["services"],
        json!([{"service": "shop/front", "port_name": "https", "protocol": "TCP"}]),
        "one entry for the cluster and the local set of the same port"
    );
    let remote = find(&rows, |r| r["ip"] == "10.244.2.7");
    assert_eq!(remote["id"], ids.backend["10.244.2.7:8080"]);
    assert_eq!(remote["local"], false);
    assert_eq!(
        remote["services"],
        json!([{"service": "shop/web", "port_name": "http", "protocol": "TCP"}])
    );
    let dns = find(&rows, |r| r["ip"] == "10.244.1.10");
    assert_eq!(dns["port"], 53);
    assert_eq!(dns["terminating"], true);
    assert_eq!(dns["services"][0]["protocol"], "UDP");
}

fn check_conntrack(pin: &Path, ids: &Ids) {
    let rows = json_of(pin, &["conntrack"]);
    let all = rows.as_array().unwrap();
    assert_eq!(all.len(), 4, "{rows:#}");
    let clients: Vec<String> = all
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["client"]["ip"].as_str().unwrap(),
                r["client"]["port"]
            )
        })
        .collect();
    assert_eq!(
        clients,
        [
            "10.244.1.5:5353",
            "10.244.1.5:41000",
            "10.244.1.5:50000",
            "198.51.100.2:40000"
        ],
        "sorted by client"
    );

    let np = &all[3];
    assert_eq!(np["frontend"], json!({"ip": "192.0.2.10", "port": 30080}));
    assert_eq!(
        np["backend"],
        json!({"id": ids.backend["10.244.2.7:8080"], "ip": "10.244.2.7", "port": 8080})
    );
    assert_eq!(np["protocol"], "TCP");
    assert_eq!(np["state"], "ESTABLISHED");
    assert_eq!(np["flags"], json!(["external", "snat"]));
    assert_eq!(np["snat"], json!({"ip": "192.0.2.10", "port": 61000}));
    assert_eq!(np["reverse_nat"], true);
    assert!(in_range(&np["age_seconds"], 125, 135), "{np}");
    assert!(in_range(&np["idle_seconds"], 5, 15), "{np}");
    assert!(in_range(&np["reply_idle_seconds"], 2, 12), "{np}");
    // 24 h for an established TCP flow, minus the idle time.
    assert!(in_range(&np["expires_in_seconds"], 86_385, 86_395), "{np}");
    assert_eq!(np["service"], "shop/web");
    assert_eq!(np["port_name"], "http");

    let hairpin = &all[2];
    assert_eq!(hairpin["frontend"], json!({"ip": "10.96.0.10", "port": 80}));
    assert_eq!(hairpin["backend"]["ip"], "10.244.1.5");
    assert_eq!(hairpin["state"], "SYN");
    assert_eq!(hairpin["flags"], json!(["hairpin", "snat"]));
    assert_eq!(
        hairpin["snat"],
        json!({"ip": "169.254.42.1", "port": 61001})
    );
    assert_eq!(hairpin["reverse_nat"], false);
    assert_eq!(hairpin["reply_idle_seconds"], Value::Null);
    assert!(
        in_range(&hairpin["expires_in_seconds"], 45, 57),
        "{hairpin}"
    );

    let closing = &all[1];
    assert_eq!(closing["service"], "shop/front");
    assert_eq!(closing["port_name"], "https");
    assert_eq!(closing["state"], "CLOSING");
    assert_eq!(closing["flags"], json!([]));
    assert_eq!(closing["snat"], Value::Null);
    assert_eq!(closing["reverse_nat"], true);
    assert!(in_range(&closing["age_seconds"], 30, 40), "{closing}");
    assert!(in_range(&closing["expires_in_seconds"], 0, 9), "{closing}");

    let udp = &all[0];
    assert_eq!(udp["protocol"], "UDP");
    assert_eq!(udp["state"], Value::Null);
    assert_eq!(udp["service"], "shop/dns");
    assert_eq!(udp["service_id"], ids.dns_set);
    assert_eq!(udp["backend"]["port"], 53);
    assert!(in_range(&udp["idle_seconds"], 20, 30), "{udp}");
    // No reply seen yet: 30 s from the last packet, not the 60 s of a UDP flow with replies.
    assert!(in_range(&udp["expires_in_seconds"], 0, 10), "{udp}");

    // --service filters by ns/name, or ns/name:port-name.
    let web = json_of(pin, &["conntrack", "--service", "shop/web"]);
    let web_clients: Vec<&Value> = web
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["client"]["port"])
        .collect();
    assert_eq!(web_clients, [&json!(50000), &json!(40000)]);
    let front = json_of(pin, &["conntrack", "--service", "shop/front:https"]);
    assert_eq!(front.as_array().unwrap().len(), 1);
    assert_eq!(front[0]["client"]["port"], 41000);
    let none = json_of(pin, &["conntrack", "--service", "shop/front:nope"]);
    assert_eq!(none, json!([]));
    let (code, msg) = failure(pin, &["conntrack", "--service", "web"]);
    assert_eq!(code, 1);
    assert!(msg.contains("NAMESPACE/NAME"), "{msg}");
}

fn check_affinity(pin: &Path, ids: &Ids) {
    let rows = json_of(pin, &["affinity"]);
    let all = rows.as_array().unwrap();
    assert_eq!(all.len(), 3, "{rows:#}");
    let live = find(&rows, |r| r["client"] == "10.244.1.5");
    assert_eq!(live["service"], "shop/dns");
    assert_eq!(live["port_name"], "dns");
    assert_eq!(live["protocol"], "UDP");
    assert_eq!(live["service_id"], ids.dns_set);
    assert_eq!(
        live["backend"],
        json!({"id": ids.backend["10.244.1.10:53"], "ip": "10.244.1.10", "port": 53})
    );
    assert_eq!(live["timeout_seconds"], 600);
    assert!(in_range(&live["idle_seconds"], 100, 110), "{live}");
    assert!(in_range(&live["seconds_left"], 490, 500), "{live}");

    let expired = find(&rows, |r| r["client"] == "10.244.1.6");
    assert_eq!(expired["seconds_left"], 0);
    assert!(in_range(&expired["idle_seconds"], 700, 710), "{expired}");

    let gone = find(&rows, |r| r["client"] == "10.244.1.7");
    assert_eq!(
        gone["backend"],
        json!({"id": 999_999, "ip": null, "port": null})
    );
    let clients: Vec<&Value> = all.iter().map(|r| &r["client"]).collect();
    assert_eq!(
        clients,
        [
            &json!("10.244.1.5"),
            &json!("10.244.1.6"),
            &json!("10.244.1.7")
        ]
    );
}

fn check_stats(pin: &Path, ids: &Ids, maps: &mut Maps) {
    let n = ids.cpus as u64;
    let snap = json_of(pin, &["stats"]);
    let frontends = &snap["frontends"];
    assert_eq!(frontends.as_array().unwrap().len(), 14);
    let web = find(frontends, |r| scope_is(r, "10.96.0.10", 80, "external"));
    assert_eq!(web["service"], "shop/web");
    assert_eq!(web["port_name"], "http");
    assert_eq!(web["frontend"]["kind"], "ClusterIP");
    assert_eq!(web["stats_id"], ids.web_clusterip_stats);
    assert_eq!(web["packets"], 10 * n);
    assert_eq!(web["bytes"], 1500 * n);
    assert_eq!(web["packets_per_second"], Value::Null);
    assert_eq!(web["socket_translations"], 4 * n);
    let other = find(frontends, |r| scope_is(r, "203.0.113.7", 443, "external"));
    assert_eq!((&other["packets"], &other["bytes"]), (&json!(0), &json!(0)));
    assert_eq!(other["socket_translations"], 0);
    assert_eq!(snap["socket_translations"], 4 * n);
    assert_eq!(
        snap["socket_lb"],
        json!({"mode": "host", "cgroup": "/sys/fs/cgroup", "cgroup_id": 4242})
    );

    let global = &snap["global"];
    assert_eq!(
        global.as_object().unwrap().len(),
        stat::COUNT as usize,
        "{global}"
    );
    assert_eq!(global["reject_no_backend"], 2 * n);
    assert_eq!(global["drop_no_local_backend"], n);
    assert_eq!(global["drop_fragment"], 3);
    assert_eq!(global["ct_new"], 0);
    assert_eq!(snap["rejects"], 2 * n);
    assert_eq!(snap["drops"], n + 3);
    assert_eq!(snap["global_per_second"], Value::Null);

    // --watch: one compact JSON document per line and refresh, with rates from the second on.
    let bin = lbctl_bin().expect("lbctl");
    let mut child = Command::new(bin)
        .arg("--pin-path")
        .arg(pin)
        .args(["-o", "json", "stats", "--watch", "2", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("lbctl stats --watch");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().expect("a line").unwrap()).unwrap();
    assert_eq!(first["interval_seconds"], Value::Null);
    // Traffic between the two refreshes (2 s apart, time enough on a busy machine): 100 packets
    // and 10 KiB more per CPU.
    maps.frontend_stats
        .set(
            ids.web_clusterip_stats,
            PerCpuValues::try_from(vec![
                Counters {
                    packets: 110,
                    bytes: 1500 + 10_240,
                };
                ids.cpus
            ])
            .unwrap(),
            0,
        )
        .expect("more packets");
    let second: Value = serde_json::from_str(&lines.next().expect("a line").unwrap()).unwrap();
    assert!(lines.next().is_none(), "--count 2 stops after two");
    assert!(child.wait().expect("wait").success());
    let secs = second["interval_seconds"].as_f64().expect("interval");
    assert!((1.9..4.0).contains(&secs), "{secs}");
    let web = find(&second["frontends"], |r| {
        scope_is(r, "10.96.0.10", 80, "external")
    });
    assert_eq!(web["packets"], 110 * n);
    let pps = web["packets_per_second"].as_f64().expect("rate");
    assert!(
        (pps - 100.0 * n as f64 / secs).abs() < 1.0,
        "{pps} packets/s over {secs}s"
    );
    let bps = web["bytes_per_second"].as_f64().expect("rate");
    assert!((bps - 10_240.0 * n as f64 / secs).abs() < 10.0, "{bps}");
    let idle = find(&second["frontends"], |r| {
        scope_is(r, "10.96.0.53", 53, "external")
    });
    assert_eq!(idle["packets_per_second"], 0.0);
    assert_eq!(second["global_per_second"]["reject_no_backend"], 0.0);

    // The table form of a watch refresh has the rate columns.
    let out = table_of(pin, &["stats", "--watch", "0.1", "--count", "2"]);
    assert!(
        out.contains("PACKETS/S") && out.contains("BYTES/S"),
        "{out}"
    );
}

/// The services table, compared with tests/testdata/lbctl/services.txt.
fn check_golden(pin: &Path) {
    let got = table_of(pin, &["services"]);
    println!("$ lbctl services\n{got}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/lbctl/services.txt");
    if std::env::var("LB_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (LB_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        got,
        want,
        "the services table changed; LB_UPDATE_GOLDEN=1 rewrites {}",
        path.display()
    );
}

/// A user without privileges is told to run as root or with CAP_BPF.
fn check_permission_denied(pin: &Path) {
    let bin = lbctl_bin().expect("lbctl");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg("--inh-caps=-all")
        .arg(&bin)
        .arg("--pin-path")
        .arg(pin)
        .arg("services")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("setpriv unavailable ({e}): permission-denied case not run");
            return;
        }
    };
    let msg = String::from_utf8_lossy(&out.stderr);
    if msg.contains("Permission denied") && !msg.contains("lbctl:") {
        eprintln!(
            "nobody cannot execute {} ({msg}): case not run",
            bin.display()
        );
        return;
    }
    println!("$ lbctl services  # as nobody\n{msg}");
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(
        msg.contains("permission denied") && msg.contains("root") && msg.contains("CAP_BPF"),
        "{msg}"
    );
}

#[test]
fn lbctl_errors_say_what_to_do() {
    if !require_privileged("lbctl-errors") {
        return;
    }
    let lab = Lab::new("lbctl-errors").expect("lab");

    // No pin path: names --pin-path and the default, suggests the agent has not run.
    let missing = lab.pin_path("missing");
    for cmd in ["services", "backends", "conntrack", "affinity", "stats"] {
        let (code, msg) = failure(&missing, &[cmd]);
        assert_eq!(code, 1, "{cmd}");
        assert!(
            msg.contains(&missing.display().to_string())
                && msg.contains("does not exist")
                && msg.contains("--pin-path")
                && msg.contains("/sys/fs/bpf/lb")
                && msg.contains("lb-agent has probably not run"),
            "{cmd}: {msg}"
        );
    }

    // A pin path without maps.
    let empty = lab.pin_path("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let (code, msg) = failure(&empty, &["services", "-o", "json"]);
    assert_eq!(code, 1);
    assert!(
        msg.contains("holds no lb maps") && msg.contains(&format!("/v{}", lb_common::ABI_VERSION)),
        "{msg}"
    );

    // Only maps of another version: says so instead of printing garbage.
    let foreign = lab.pin_path("foreign");
    std::fs::create_dir_all(foreign.join("v999")).expect("mkdir");
    let (code, msg) = failure(&foreign, &["services"]);
    assert_eq!(code, 1);
    assert!(
        msg.contains("another lb version")
            && msg.contains("v999")
            && msg.contains(&format!("reads only v{}", lb_common::ABI_VERSION)),
        "{msg}"
    );

    // A map missing from a version's directory (an agent still creating them, or an older
    // release without it): says both, naming the map, rather than "another lb version".
    let partial = lab.pin_dir("partial").expect("pin dir");
    let opts = Options {
        pin_path: partial.clone(),
        capacities: vec![],
    };
    drop(Dataplane::open(&opts).expect("dataplane"));
    let layout = lb::dataplane::PinLayout::new(&partial);
    std::fs::remove_file(layout.map(lb_common::map_names::CT_ANY4)).expect("unpin a map");
    let (code, msg) = failure(&partial, &["conntrack"]);
    assert_eq!(code, 1);
    assert!(
        msg.contains("incomplete")
            && msg.contains("LB4_CT_ANY")
            && msg.contains("starting")
            && !msg.contains("another lb version"),
        "{msg}"
    );

    // Usage errors are clap's (exit code 2).
    let out = run(&missing, &["stats", "--count", "2"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A Service port name is a DNS label of up to 63 characters: all of it reaches the maps, lbctl
/// (services, backends) and the metrics labels (issue 13: names over 15 dropped the Service).
#[test]
fn a_63_character_port_name_is_shown_whole() {
    if !require_privileged("lbctl-long-name") {
        return;
    }
    const NAME: &str = "prometheus-metrics-http-endpoint-of-a-rather-long-named-export1";
    assert_eq!(NAME.len(), 63);
    let manifests = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: exporter, namespace: mon}}
spec:
  clusterIP: 10.96.0.90
  ports: [{{name: {NAME}, port: 9100}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: exporter-1, namespace: mon, labels: {{kubernetes.io/service-name: exporter}}}}
addressType: IPv4
ports: [{{name: {NAME}, port: 9100}}]
endpoints:
- {{addresses: [10.244.1.30], nodeName: node-a}}
"
    );
    let lab = Lab::new("lbctl-long-name").expect("lab");
    let pin = lab.pin_path("node");
    let mut dp = Dataplane::open(&Options {
        pin_path: pin.clone(),
        capacities: vec![],
    })
    .expect("dataplane");
    let node = NodeContext::<Ipv4Addr> {
        name: "node-a".into(),
        nodeport_addrs: vec![],
    };
    let want = desired(&objects_of(&manifests).expect("manifests"), &node);
    assert!(want.problems.is_empty(), "{:?}", want.problems);
    let caps = Capacities::read(dp.layout()).expect("capacities");
    let mut rec = Reconciler::adopt(&dp.maps, caps).expect("adopt");
    let report = rec.apply(&mut dp.maps, &want);
    assert!(report.errors.is_empty(), "{report:?}");

    let services = json_of(&pin, &["services"]);
    let rows = services.as_array().expect("array");
    assert!(!rows.is_empty());
    for row in rows {
        assert_eq!(row["service"], "mon/exporter");
        assert_eq!(row["port_name"], NAME, "{row}");
    }
    let backends = json_of(&pin, &["backends"]);
    assert_eq!(backends[0]["services"][0]["port_name"], NAME, "{backends}");
    let series = lb::metrics::frontend_series(
        &lb::dataplane::reconcile::Programmed::<Ipv4Addr>::read(&dp.maps).expect("programmed"),
    );
    assert!(!series.is_empty());
    for s in series {
        assert!(
            s.labels.contains(&("port_name", NAME.to_string())),
            "{:?}",
            s.labels
        );
    }
}

/// A dual-stack Service's IPv6 frontends and backends are in `lbctl services` and `lbctl
/// backends` beside its IPv4 ones, addresses as canonical strings (the JSON gains values, no
/// field is renamed), and the table brackets IPv6 addresses before a port.
#[test]
fn ipv6_frontends_and_backends_are_shown_beside_ipv4() {
    if !require_privileged("lbctl-ipv6") {
        return;
    }
    let manifests = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv6, IPv4]
  clusterIP: fd00:96::10
  clusterIPs: [\"fd00:96::10\", 10.96.0.10]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [\"fd00:244:1::5\"], nodeName: node-a}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.5], nodeName: node-a}
";
    let lab = Lab::new("lbctl-ipv6").expect("lab");
    let pin = lab.pin_path("node");
    let mut dp = Dataplane::open(&Options {
        pin_path: pin.clone(),
        capacities: vec![],
    })
    .expect("dataplane");
    let objects = objects_of(manifests).expect("manifests");
    let caps = Capacities::read(dp.layout()).expect("capacities");
    let mut rec = Reconciler::adopt(&dp.maps, caps).expect("adopt");
    let node4 = NodeContext::<Ipv4Addr> {
        name: "node-a".into(),
        nodeport_addrs: vec!["192.0.2.10".parse().unwrap()],
    };
    let node6 = NodeContext::<Ipv6Addr> {
        name: "node-a".into(),
        nodeport_addrs: vec!["2001:db8::10".parse().unwrap()],
    };
    let r4 = rec.apply(&mut dp.maps, &desired(&objects, &node4));
    let r6 = rec.apply(&mut dp.maps, &desired(&objects, &node6));
    assert!(
        r4.errors.is_empty() && r6.errors.is_empty(),
        "{r4:?} {r6:?}"
    );

    let services = json_of(&pin, &["services"]);
    let frontends: Vec<(String, u64, String)> = services
        .as_array()
        .expect("array")
        .iter()
        .map(|row| {
            let f = &row["frontend"];
            let backends: Vec<String> = row["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .map(|b| b["ip"].as_str().expect("ip").to_string())
                .collect();
            let ip = f["ip"].as_str().expect("ip").to_string();
            (ip, f["port"].as_u64().expect("port"), backends.join(","))
        })
        .collect();
    let want = [
        ("10.96.0.10", 80, "10.244.1.5"),
        ("192.0.2.10", 30080, "10.244.1.5"),
        ("2001:db8::10", 30080, "fd00:244:1::5"),
        ("fd00:96::10", 80, "fd00:244:1::5"),
    ];
    let want: Vec<(String, u64, String)> = want
        .iter()
        .map(|(ip, port, b)| (ip.to_string(), *port, b.to_string()))
        .collect();
    assert_eq!(frontends, want, "{services}");

    let backends = json_of(&pin, &["backends"]);
    let ips: Vec<&str> = backends
        .as_array()
        .expect("array")
        .iter()
        .map(|b| b["ip"].as_str().expect("ip"))
        .collect();
    assert_eq!(ips, ["10.244.1.5", "fd00:244:1::5"], "{backends}");

    let table = run(&pin, &["services"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("[fd00:96::10]:80/TCP"), "{text}");
    assert!(text.contains("[fd00:244:1::5]:8080"), "{text}");
}
