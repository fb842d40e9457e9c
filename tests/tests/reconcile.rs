//! The reconciler against real pinned maps: manifests in, map contents out (read back through
//! `dataplane::view`, as lbctl shows them), and what a second apply writes.
use lb::{
    dataplane::{
        maps::entries,
        reconcile::{Reconciler, Report},
        view, Capacities, Dataplane, Maps, Options,
    },
    model::{desired, Desired, NodeContext, Objects, Tracker},
    source::manifests::objects_of,
};
use lb_common::map_names;
use lb_tests::lab::{require_privileged, Lab};

fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec!["192.0.2.10".parse().unwrap()],
    }
}

fn want(yaml: &str) -> Desired {
    desired(&objects_of(yaml).expect("valid manifests"), &node())
}

/// `web` with the given endpoints (all on node-a), ClusterIP and NodePort, TCP.
fn web(endpoints: &[&str]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|ip| format!("- {{addresses: [{ip}], nodeName: node-a}}\n"))
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, nodePort: 30080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
{eps}"
    )
}

/// `shop/edge`: a LoadBalancer (203.0.113.10) with `ranges` as its loadBalancerSourceRanges.
fn edge(ranges: &[&str]) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: edge, namespace: shop}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  loadBalancerSourceRanges: [{}]
  ports: [{{name: https, port: 443, nodePort: 30443}}]
status:
  loadBalancer:
    ingress: [{{ip: 203.0.113.10}}]
",
        ranges.join(", ")
    )
}

fn other(name: &str, ip: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec: {{clusterIP: {ip}, ports: [{{port: 53, protocol: UDP}}]}}
"
    )
}

/// The maps as `lbctl services` lines.
fn dump(maps: &Maps) -> Vec<String> {
    view::frontends(maps)
        .expect("read maps")
        .iter()
        .map(|s| {
            let backends: Vec<String> = s
                .backends
                .iter()
                .map(|b| format!("{}:{}", b.ip, b.port))
                .collect();
            let from = match s.source_ranges.is_empty() {
                true => String::new(),
                false => format!(" from {}", s.source_ranges.join(",")),
            };
            format!(
                "{}:{} {} {}:{}/{} -> [{}]{from}",
                s.service,
                s.port_name,
                s.frontend.scope,
                s.frontend.ip,
                s.frontend.port,
                s.frontend.protocol,
                backends.join(" ")
            )
        })
        .collect()
}

fn open(lab: &Lab, name: &str, capacities: Vec<(&'static str, u32)>) -> Dataplane {
    let opts = Options {
        pin_path: lab.pin_path(name),
        capacities,
    };
    Dataplane::open(&opts).expect("dataplane")
}

fn apply(rec: &mut Reconciler, dp: &mut Dataplane, d: &Desired) -> Report {
    let report = rec.apply(&mut dp.maps, d);
    assert!(report.errors.is_empty(), "map errors: {:?}", report.errors);
    report
}

#[test]
fn programs_diffs_adopts_and_repairs() {
    if !require_privileged("reconcile") {
        return;
    }
    let lab = Lab::new("reconcile").expect("lab");
    let mut dp = open(&lab, "node", vec![]);
    let caps = Capacities::read(dp.layout()).expect("capacities");
    let mut rec = Reconciler::adopt(&dp.maps, caps).expect("adopt");

    let two = want(&web(&["10.244.1.5", "10.244.1.6"]));
    let first = apply(&mut rec, &mut dp, &two);
    assert_eq!(
        (
            first.frontends_written,
            first.sets_written,
            first.backends_written
        ),
        (4, 1, 2)
    );
    let programmed = dump(&dp.maps);
    assert_eq!(
        programmed,
        [
            "shop/web:http external 10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.1.6:8080]",
            "shop/web:http internal 10.96.0.10:80/TCP -> [10.244.1.5:8080 10.244.1.6:8080]",
            "shop/web:http external 192.0.2.10:30080/TCP -> [10.244.1.5:8080 10.244.1.6:8080]",
            "shop/web:http internal 192.0.2.10:30080/TCP -> [10.244.1.5:8080 10.244.1.6:8080]",
        ]
    );

    // Nothing changed: nothing written.
    assert_eq!(
        apply(&mut rec, &mut dp, &two).writes(),
        0,
        "an unchanged state is not rewritten"
    );

    // One endpoint gone: the set and the backend change, no frontend is rewritten, the
    // remaining backend keeps its id (conntrack entries name backends by id).
    let ids_before = rec.programmed().backends.clone();
    let one = want(&web(&["10.244.1.6"]));
    let r = apply(&mut rec, &mut dp, &one);
    assert_eq!(
        (r.frontends_written, r.sets_written, r.backends_removed),
        (0, 1, 1)
    );
    let kept = ids_before
        .iter()
        .find(|(_, b)| b.addr == u32::from_ne_bytes([10, 244, 1, 6]));
    assert!(rec
        .programmed()
        .backends
        .contains_key(kept.expect("was there").0));
    assert!(dump(&dp.maps)
        .iter()
        .all(|l| l.ends_with("-> [10.244.1.6:8080]")));

    // A restarted agent adopts the maps: same desired state, no writes.
    let mut adopted = Reconciler::adopt(&dp.maps, caps).expect("adopt again");
    assert_eq!(
        apply(&mut adopted, &mut dp, &one).writes(),
        0,
        "adoption rewrites nothing"
    );

    // Entries deleted by hand come back at the next resync.
    let before = dump(&dp.maps);
    let (key, _) = adopted
        .programmed()
        .frontends
        .iter()
        .next()
        .map(|(k, v)| (*k, *v))
        .unwrap();
    dp.maps
        .remove_frontend(&key)
        .expect("delete a frontend by hand");
    let set_id = *adopted.programmed().sets.keys().next().unwrap();
    dp.maps
        .remove_service(set_id)
        .expect("delete a set by hand");
    assert_ne!(dump(&dp.maps), before);
    adopted.resync(&dp.maps).expect("resync");
    let repaired = apply(&mut adopted, &mut dp, &one);
    assert!(repaired.writes() >= 2, "{repaired:?}");
    assert_eq!(dump(&dp.maps), before, "drift repaired");

    // Everything removed: the maps are empty again.
    let r = apply(&mut adopted, &mut dp, &Desired::default());
    assert_eq!(
        (r.frontends_removed, r.sets_removed, r.backends_removed),
        (4, 1, 1)
    );
    assert!(dump(&dp.maps).is_empty());
    assert!(
        dp.maps.service_names.keys().next().is_none(),
        "names removed too"
    );
}

#[test]
fn a_service_that_does_not_fit_is_refused_whole() {
    if !require_privileged("reconcile") {
        return;
    }
    let lab = Lab::new("reconcile-cap").expect("lab");
    // Room for 6 frontends: `web` takes 4 (ClusterIP and NodePort, two scopes each), every
    // `other` service 2.
    let mut dp = open(&lab, "node", vec![(map_names::FRONTENDS4, 6)]);
    let caps = Capacities::read(dp.layout()).expect("capacities");
    assert_eq!(caps.frontends, 6);
    let mut rec = Reconciler::adopt(&dp.maps, caps).expect("adopt");

    let yaml = web(&["10.244.1.5"]) + &other("dns-a", "10.96.0.53");
    apply(&mut rec, &mut dp, &want(&yaml));
    assert_eq!(dump(&dp.maps).len(), 6);

    // A third service does not fit: refused whole, the others untouched.
    let more = yaml.clone() + &other("dns-b", "10.96.0.54");
    let r = rec.apply(&mut dp.maps, &want(&more));
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert_eq!(r.refused[0].0.to_string(), "shop/dns-b");
    assert_eq!(r.refused[0].1, map_names::FRONTENDS4);
    let lines = dump(&dp.maps);
    assert_eq!(lines.len(), 6);
    assert!(
        lines.iter().all(|l| !l.contains("dns-b")),
        "nothing of dns-b written: {lines:?}"
    );
    assert!(
        r.errors.is_empty(),
        "refused before writing, no map error: {:?}",
        r.errors
    );

    // Room again once another service goes: dns-b gets in.
    let swapped = web(&["10.244.1.5"]) + &other("dns-b", "10.96.0.54");
    let r = apply(&mut rec, &mut dp, &want(&swapped));
    assert!(r.refused.is_empty());
    assert!(dump(&dp.maps).iter().any(|l| l.starts_with("shop/dns-b")));
}

/// A ClusterIP service on UDP 53 with endpoints `(ip, condition)` (condition "" or
/// "terminating"), all on node-a.
fn dns(name: &str, ip: &str, endpoints: &[(&str, &str)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(ip, cond)| {
            let cond = match *cond {
                "terminating" => ", conditions: {ready: false, serving: true, terminating: true}",
                _ => "",
            };
            format!("- {{addresses: [{ip}], nodeName: node-a{cond}}}\n")
        })
        .collect();
    format!(
        "{}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: 5353, protocol: UDP}}]
endpoints:
{eps}",
        other(name, ip)
    )
}

/// The backends map as `ip:port flags` lines, ids left out.
fn backends(maps: &Maps) -> Vec<String> {
    let mut out: Vec<String> = entries(&maps.backends)
        .expect("read backends")
        .into_iter()
        .map(|(_, b)| {
            let ip = std::net::Ipv4Addr::from(b.addr.to_ne_bytes());
            format!("{ip}:{} flags={}", u16::from_be(b.port), b.flags)
        })
        .collect();
    out.sort();
    out
}

/// Objects parsed from `yaml`, each equal to one in `previous` replaced by it (same Arc), as
/// the sources do: the tracker then sees only what changed.
fn objects_after(previous: &Objects, yaml: &str) -> Objects {
    let mut next = objects_of(yaml).expect("valid manifests");
    for (key, svc) in next.services.iter_mut() {
        if let Some(old) = previous.services.get(key).filter(|o| *o == svc) {
            *svc = old.clone();
        }
    }
    for (key, slice) in next.slices.iter_mut() {
        if let Some(old) = previous.slices.get(key).filter(|o| *o == slice) {
            *slice = old.clone();
        }
    }
    next
}

struct Step {
    yaml: fn() -> String,
    /// Services refused at this step.
    refused: &'static [&'static str],
    /// Lines of `backends` expected (empty: not checked).
    backends: &'static [&'static str],
    /// The source ranges the frontends show, each list once (` from A,B`; empty: none).
    from: &'static [&'static str],
}

struct Case {
    name: &'static str,
    capacities: &'static [(&'static str, u32)],
    steps: &'static [Step],
}

const CASES: &[Case] = &[
    Case {
        name: "source ranges added, changed and dropped with their LoadBalancer IP",
        capacities: &[],
        steps: &[
            Step {
                yaml: || web(&["10.244.1.5"]) + &edge(&["198.51.100.0/24"]),
                refused: &[],
                backends: &[],
                from: &[" from 198.51.100.0/24"],
            },
            Step {
                yaml: || web(&["10.244.1.5"]) + &edge(&["198.51.100.0/25", "192.0.2.7/32"]),
                refused: &[],
                backends: &[],
                from: &[" from 192.0.2.7/32,198.51.100.0/25"],
            },
            Step {
                yaml: || web(&["10.244.1.5"]) + &edge(&[]),
                refused: &[],
                backends: &[],
                from: &[],
            },
            Step {
                yaml: || web(&["10.244.1.5"]) + &edge(&["203.0.113.0/24"]),
                refused: &[],
                backends: &[],
                from: &[" from 203.0.113.0/24"],
            },
            Step {
                yaml: || web(&["10.244.1.5"]),
                refused: &[],
                backends: &[],
                from: &[],
            },
        ],
    },
    Case {
        name: "an endpoint replaced",
        capacities: &[],
        steps: &[
            Step {
                yaml: || web(&["10.244.1.5", "10.244.1.6"]),
                refused: &[],
                backends: &["10.244.1.5:8080 flags=1", "10.244.1.6:8080 flags=1"],
                from: &[],
            },
            Step {
                yaml: || web(&["10.244.1.5", "10.244.1.7"]),
                refused: &[],
                backends: &["10.244.1.5:8080 flags=1", "10.244.1.7:8080 flags=1"],
                from: &[],
            },
        ],
    },
    Case {
        name: "a service deleted",
        capacities: &[],
        steps: &[
            Step {
                yaml: || web(&["10.244.1.5"]) + &dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")]),
                refused: &[],
                backends: &["10.244.1.5:8080 flags=1", "10.244.2.1:5353 flags=1"],
                from: &[],
            },
            Step {
                yaml: || web(&["10.244.1.5"]),
                refused: &[],
                backends: &["10.244.1.5:8080 flags=1"],
                from: &[],
            },
        ],
    },
    Case {
        name: "a backend shared by two services stays while one names it",
        capacities: &[],
        steps: &[
            Step {
                yaml: || {
                    dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")])
                        + &dns(
                            "dns-b",
                            "10.96.0.54",
                            &[("10.244.2.1", ""), ("10.244.2.2", "")],
                        )
                },
                refused: &[],
                backends: &["10.244.2.1:5353 flags=1", "10.244.2.2:5353 flags=1"],
                from: &[],
            },
            Step {
                yaml: || dns("dns-b", "10.96.0.54", &[("10.244.2.1", "")]),
                refused: &[],
                backends: &["10.244.2.1:5353 flags=1"],
                from: &[],
            },
            Step {
                yaml: || dns("dns-a", "10.96.0.53", &[("10.244.2.2", "")]),
                refused: &[],
                backends: &["10.244.2.2:5353 flags=1"],
                from: &[],
            },
        ],
    },
    Case {
        name: "a terminating backend stays until its endpoint goes",
        capacities: &[],
        steps: &[
            Step {
                yaml: || {
                    dns(
                        "dns-a",
                        "10.96.0.53",
                        &[("10.244.2.1", ""), ("10.244.2.2", "")],
                    )
                },
                refused: &[],
                backends: &["10.244.2.1:5353 flags=1", "10.244.2.2:5353 flags=1"],
                from: &[],
            },
            Step {
                yaml: || {
                    dns(
                        "dns-a",
                        "10.96.0.53",
                        &[("10.244.2.1", ""), ("10.244.2.2", "terminating")],
                    )
                },
                refused: &[],
                backends: &["10.244.2.1:5353 flags=1", "10.244.2.2:5353 flags=3"],
                from: &[],
            },
            Step {
                yaml: || dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")]),
                refused: &[],
                backends: &["10.244.2.1:5353 flags=1"],
                from: &[],
            },
        ],
    },
    Case {
        name: "a service that does not fit keeps its old entries; programmed ones go first",
        // web takes 4 frontends, each dns service 2.
        capacities: &[(map_names::FRONTENDS4, 6)],
        steps: &[
            Step {
                yaml: || web(&["10.244.1.5"]) + &dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")]),
                refused: &[],
                backends: &[],
                from: &[],
            },
            Step {
                yaml: || {
                    web(&["10.244.1.6"])
                        + &dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")])
                        + &dns("dns-b", "10.96.0.54", &[("10.244.2.2", "")])
                },
                refused: &["shop/dns-b"],
                backends: &["10.244.1.6:8080 flags=1", "10.244.2.1:5353 flags=1"],
                from: &[],
            },
            Step {
                // web grows an externalIP (2 frontends more): it no longer fits and keeps its
                // entries, backend included.
                yaml: || {
                    web(&["10.244.1.7"]).replace(
                        "clusterIP: 10.96.0.10",
                        "clusterIP: 10.96.0.10\n  externalIPs: [203.0.113.1]",
                    ) + &dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")])
                        + &dns("dns-b", "10.96.0.54", &[("10.244.2.2", "")])
                },
                // Programmed services are planned first.
                refused: &["shop/web", "shop/dns-b"],
                backends: &["10.244.1.6:8080 flags=1", "10.244.2.1:5353 flags=1"],
                from: &[],
            },
            Step {
                yaml: || web(&["10.244.1.5"]) + &dns("dns-b", "10.96.0.54", &[("10.244.2.2", "")]),
                refused: &[],
                backends: &["10.244.1.5:8080 flags=1", "10.244.2.2:5353 flags=1"],
                from: &[],
            },
        ],
    },
];

/// Each step applied as the agent does (tracker changes, `apply_changes`) to one dataplane and
/// from scratch (`apply`) to another: both must hold the same, with the same refusals.
#[test]
fn incremental_apply_matches_full_apply() {
    if !require_privileged("reconcile") {
        return;
    }
    let lab = Lab::new("reconcile-incr").expect("lab");
    for (n, case) in CASES.iter().enumerate() {
        let caps = case.capacities.to_vec();
        let mut incr_dp = open(&lab, &format!("incr-{n}"), caps.clone());
        let mut full_dp = open(&lab, &format!("full-{n}"), caps);
        let caps = Capacities::read(incr_dp.layout()).expect("capacities");
        let mut incr = Reconciler::adopt(&incr_dp.maps, caps).expect("adopt");
        let mut full = Reconciler::adopt(&full_dp.maps, caps).expect("adopt");
        let mut tracker = Tracker::default();
        let mut objects = Objects::default();
        for (i, step) in case.steps.iter().enumerate() {
            let what = format!("{}, step {i}", case.name);
            let next = objects_after(&objects, &(step.yaml)());
            let changes = tracker.update(&objects, &next, &node());
            objects = next;
            let r = if i == 0 {
                incr.apply(&mut incr_dp.maps, tracker.desired())
            } else {
                incr.apply_changes(&mut incr_dp.maps, tracker.desired(), &changes)
            };
            assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
            let refused: Vec<String> = r.refused.iter().map(|(s, _)| s.to_string()).collect();
            assert_eq!(refused, step.refused, "{what}: refused");
            let f = apply(&mut full, &mut full_dp, &desired(&objects, &node()));
            assert_eq!(f.refused, r.refused, "{what}: refused by the full apply");
            assert_eq!(
                dump(&incr_dp.maps),
                dump(&full_dp.maps),
                "{what}: frontends"
            );
            assert_eq!(backends(&incr_dp.maps), backends(&full_dp.maps), "{what}");
            if !step.backends.is_empty() {
                assert_eq!(backends(&incr_dp.maps), step.backends, "{what}: backends");
            }
            let mut from: Vec<String> = dump(&incr_dp.maps)
                .iter()
                .filter_map(|l| l.find(" from ").map(|at| l[at..].to_string()))
                .collect();
            from.sort();
            from.dedup();
            assert_eq!(from, step.from, "{what}: source ranges");
            let read = lb::dataplane::reconcile::Programmed::read(&incr_dp.maps).expect("read");
            assert_eq!(
                &read,
                incr.programmed(),
                "{what}: the reconciler's view of the maps"
            );
        }
    }
}

/// The upgrade from a release whose `LB_SERVICE_NAMES` held 15-byte port names: the agent copies
/// them into `LB_SVC_NAMES` and removes the old map, so the reconciler recognises every set it
/// adopts and rewrites nothing (set and backend ids, which flows name, stay).
#[test]
fn an_upgrade_migrates_the_old_set_names_and_rewrites_nothing() {
    if !require_privileged("reconcile::upgrade_names") {
        return;
    }
    use aya::maps::{HashMap, MapData};
    let lab = Lab::new("reconcile-upgrade").expect("lab");
    let mut dp = open(&lab, "node", vec![]);
    let caps = Capacities::read(dp.layout()).expect("capacities");
    let mut rec = Reconciler::adopt(&dp.maps, caps).expect("adopt");
    let state = want(&web(&["10.244.1.5", "10.244.1.6"]));
    apply(&mut rec, &mut dp, &state);
    let names = entries(&dp.maps.service_names).expect("names");
    assert!(!names.is_empty());
    let layout = dp.layout().clone();
    drop(dp);

    // What the old release left: its name map (value: name[128], port_name[16], proto, policy,
    // 6 bytes of padding), and none of the new one.
    let mut old: HashMap<MapData, u32, [u8; 152]> = HashMap::create(64, 0).expect("old map");
    for (id, name) in &names {
        let mut value = [0u8; 152];
        value[..128].copy_from_slice(&name.name);
        value[128..144].copy_from_slice(&name.port_name[..16]);
        value[144] = name.proto;
        value[145] = name.policy;
        old.insert(id, value, 0).expect("old entry");
    }
    let path = layout.map(map_names::SERVICE_NAMES_V1);
    old.pin(&path).expect("pin the old map");
    std::fs::remove_file(layout.map(map_names::SERVICE_NAMES)).expect("unpin the new map");

    let mut dp = open(&lab, "node", vec![]);
    assert!(
        !layout.map(map_names::SERVICE_NAMES_V1).exists(),
        "the old map is removed"
    );
    assert_eq!(
        entries(&dp.maps.service_names).expect("names"),
        names,
        "every name migrated"
    );
    let mut adopted = Reconciler::adopt(&dp.maps, caps).expect("adopt after the upgrade");
    assert_eq!(
        apply(&mut adopted, &mut dp, &state).writes(),
        0,
        "the upgraded agent rewrites nothing"
    );
}
