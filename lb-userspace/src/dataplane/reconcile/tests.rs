//! The reconciler on in-memory maps, without root. Each case's steps are applied as the agent
//! applies them (tracker changes, incremental) and from scratch (a full apply), and must agree;
//! then every write of every step is failed in turn (and all of a step's writes at once): the
//! fake checks after each write that no packet could meet a dangling reference, and the next
//! apply must leave exactly what the fault-free run left, with nothing stale behind.
use std::cell::Cell;
use std::rc::Rc;

use lb_common::{capacity, map_names, Affinity, AffinityKey4};

use super::{
    fake::{Faulty, MemoryMaps},
    Programmed, Reconciler, Write,
};
use crate::{
    dataplane::{maps::Capacities, view},
    model::{desired, Changes, NodeContext, Objects, Tracker},
    source::manifests::objects_of,
};

fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec!["192.0.2.10".parse().unwrap()],
    }
}

fn caps(overrides: &[(&str, u32)]) -> Capacities {
    let size = |name: &str, default: u32| {
        let found = overrides.iter().find(|(n, _)| *n == name);
        found.map_or(default, |(_, size)| *size)
    };
    Capacities {
        frontends: size(map_names::FRONTENDS4, capacity::FRONTENDS),
        services: size(map_names::SERVICES, capacity::SERVICES),
        slots: size(map_names::SLOTS, capacity::SLOTS),
        backends: size(map_names::BACKENDS4, capacity::BACKENDS),
        ct: capacity::CT,
        ct_any: capacity::CT_ANY,
    }
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

/// `shop/edge`: a LoadBalancer (203.0.113.10) with `ranges` as its loadBalancerSourceRanges and
/// ClientIP affinity.
fn edge(ranges: &[&str]) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: edge, namespace: shop}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  loadBalancerSourceRanges: [{}]
  ports: [{{name: https, port: 443, nodePort: 30443}}]
status:
  loadBalancer:
    ingress: [{{ip: 203.0.113.10}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: edge-1, namespace: shop, labels: {{kubernetes.io/service-name: edge}}}}
addressType: IPv4
ports: [{{name: https, port: 8443}}]
endpoints:
- {{addresses: [10.244.1.5], nodeName: node-a}}
",
        ranges.join(", ")
    )
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
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec: {{clusterIP: {ip}, ports: [{{port: 53, protocol: UDP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: 5353, protocol: UDP}}]
endpoints:
{eps}"
    )
}

/// The maps as `lbctl services` lines.
fn dump(maps: &impl super::ServiceMaps) -> Vec<String> {
    let programmed = Programmed::read(maps).expect("read maps");
    view::frontends_of(&programmed)
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

/// The backends map as `ip:port flags` lines, ids left out.
fn backends(maps: &MemoryMaps) -> Vec<String> {
    let mut out: Vec<String> = maps
        .backends
        .values()
        .map(|b| {
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

/// A client stuck to every backend of every set, as the datapath would leave them: the
/// reconciler must remove those of a set that goes and of a backend that leaves its set.
fn clients_everywhere(maps: &mut MemoryMaps) {
    let sets: Vec<u32> = maps.services.keys().copied().collect();
    for set in sets {
        for backend in maps.set_backends(set) {
            let key = AffinityKey4 {
                service_id: set,
                client: backend,
            };
            let entry = Affinity {
                backend_id: backend,
                ..Default::default()
            };
            maps.affinity.insert(key, entry);
        }
    }
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

const fn step(yaml: fn() -> String) -> Step {
    Step {
        yaml,
        refused: &[],
        backends: &[],
        from: &[],
    }
}

const CASES: &[Case] = &[
    Case {
        name: "source ranges added, changed and dropped with their LoadBalancer IP",
        capacities: &[],
        steps: &[
            Step {
                from: &[" from 198.51.100.0/24"],
                ..step(|| web(&["10.244.1.5"]) + &edge(&["198.51.100.0/24"]))
            },
            Step {
                from: &[" from 192.0.2.7/32,198.51.100.0/25"],
                ..step(|| web(&["10.244.1.5"]) + &edge(&["198.51.100.0/25", "192.0.2.7/32"]))
            },
            step(|| web(&["10.244.1.5"]) + &edge(&[])),
            Step {
                from: &[" from 203.0.113.0/24"],
                ..step(|| web(&["10.244.1.5"]) + &edge(&["203.0.113.0/24"]))
            },
            step(|| web(&["10.244.1.5"])),
        ],
    },
    Case {
        name: "an endpoint replaced",
        capacities: &[],
        steps: &[
            Step {
                backends: &["10.244.1.5:8080 flags=1", "10.244.1.6:8080 flags=1"],
                ..step(|| web(&["10.244.1.5", "10.244.1.6"]))
            },
            Step {
                backends: &["10.244.1.5:8080 flags=1", "10.244.1.7:8080 flags=1"],
                ..step(|| web(&["10.244.1.5", "10.244.1.7"]))
            },
        ],
    },
    Case {
        name: "a service deleted",
        capacities: &[],
        steps: &[
            Step {
                backends: &["10.244.1.5:8080 flags=1", "10.244.2.1:5353 flags=1"],
                ..step(|| web(&["10.244.1.5"]) + &dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")]))
            },
            Step {
                backends: &["10.244.1.5:8080 flags=1"],
                ..step(|| web(&["10.244.1.5"]))
            },
        ],
    },
    Case {
        name: "a backend shared by two services stays while one names it",
        capacities: &[],
        steps: &[
            Step {
                backends: &["10.244.2.1:5353 flags=1", "10.244.2.2:5353 flags=1"],
                ..step(|| {
                    dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")])
                        + &dns(
                            "dns-b",
                            "10.96.0.54",
                            &[("10.244.2.1", ""), ("10.244.2.2", "")],
                        )
                })
            },
            Step {
                backends: &["10.244.2.1:5353 flags=1"],
                ..step(|| dns("dns-b", "10.96.0.54", &[("10.244.2.1", "")]))
            },
            Step {
                backends: &["10.244.2.2:5353 flags=1"],
                ..step(|| dns("dns-a", "10.96.0.53", &[("10.244.2.2", "")]))
            },
        ],
    },
    Case {
        name: "a terminating backend stays until its endpoint goes",
        capacities: &[],
        steps: &[
            Step {
                backends: &["10.244.2.1:5353 flags=1", "10.244.2.2:5353 flags=1"],
                ..step(|| {
                    dns(
                        "dns-a",
                        "10.96.0.53",
                        &[("10.244.2.1", ""), ("10.244.2.2", "")],
                    )
                })
            },
            Step {
                backends: &["10.244.2.1:5353 flags=1", "10.244.2.2:5353 flags=3"],
                ..step(|| {
                    dns(
                        "dns-a",
                        "10.96.0.53",
                        &[("10.244.2.1", ""), ("10.244.2.2", "terminating")],
                    )
                })
            },
            Step {
                backends: &["10.244.2.1:5353 flags=1"],
                ..step(|| dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")]))
            },
        ],
    },
    Case {
        name: "a service that does not fit keeps its old entries; programmed ones go first",
        // web takes 4 frontends, each dns service 2.
        capacities: &[(map_names::FRONTENDS4, 6)],
        steps: &[
            step(|| web(&["10.244.1.5"]) + &dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")])),
            Step {
                refused: &["shop/dns-b"],
                backends: &["10.244.1.6:8080 flags=1", "10.244.2.1:5353 flags=1"],
                ..step(|| {
                    web(&["10.244.1.6"])
                        + &dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")])
                        + &dns("dns-b", "10.96.0.54", &[("10.244.2.2", "")])
                })
            },
            Step {
                // web grows an externalIP (2 frontends more): it no longer fits and keeps its
                // entries, backend included. Programmed services are planned first.
                refused: &["shop/web", "shop/dns-b"],
                backends: &["10.244.1.6:8080 flags=1", "10.244.2.1:5353 flags=1"],
                ..step(|| {
                    web(&["10.244.1.7"]).replace(
                        "clusterIP: 10.96.0.10",
                        "clusterIP: 10.96.0.10\n  externalIPs: [203.0.113.1]",
                    ) + &dns("dns-a", "10.96.0.53", &[("10.244.2.1", "")])
                        + &dns("dns-b", "10.96.0.54", &[("10.244.2.2", "")])
                })
            },
            Step {
                backends: &["10.244.1.5:8080 flags=1", "10.244.2.2:5353 flags=1"],
                ..step(|| web(&["10.244.1.5"]) + &dns("dns-b", "10.96.0.54", &[("10.244.2.2", "")]))
            },
        ],
    },
];

/// Which writes of a run fail.
#[derive(Clone, Debug)]
enum Fault {
    None,
    /// At step `step`, the first write equal to `write`.
    One {
        step: usize,
        write: Box<Write>,
    },
    /// At step `step`, every write.
    All {
        step: usize,
    },
}

/// What the maps showed after each step (after the recovery apply, at a faulted step).
#[derive(Debug, PartialEq)]
struct After {
    dump: Vec<String>,
    backends: Vec<String>,
    refused: Vec<String>,
}

/// Armed by the run at the faulted step; read by the faulty maps' predicate.
#[derive(Clone, Default)]
struct Trigger(Rc<Cell<Option<Fault>>>);

impl Trigger {
    fn fires(&self, write: &Write) -> bool {
        let fault = self.0.take();
        let fires = match &fault {
            Some(Fault::One { write: w, .. }) => **w == *write,
            Some(Fault::All { .. }) => true,
            _ => false,
        };
        // A single fault fires once; "all" stays armed for the step.
        if !fires || matches!(fault, Some(Fault::All { .. })) {
            self.0.set(fault);
        }
        fires
    }
}

/// Run a case's steps incrementally, with `fault`; also returns each step's writes.
fn run(case: &Case, fault: &Fault) -> (Vec<After>, Vec<Vec<Write>>) {
    let trigger = Trigger::default();
    let fires = trigger.clone();
    let mut maps = Faulty::new(MemoryMaps::default(), move |_, w| fires.fires(w));
    let caps = caps(case.capacities);
    let mut rec = Reconciler::adopt(&maps, caps).expect("adopt");
    let mut tracker = Tracker::default();
    let mut objects = Objects::default();
    let (mut out, mut writes) = (Vec::new(), Vec::new());
    for (i, step) in case.steps.iter().enumerate() {
        let what = format!("{}, step {i}, {fault:?}", case.name);
        let next = objects_after(&objects, &(step.yaml)());
        let changes = tracker.update(&objects, &next, &node());
        objects = next;
        let faulted = match fault {
            Fault::One { step, .. } | Fault::All { step } => *step == i,
            Fault::None => false,
        };
        if faulted {
            trigger.0.set(Some(fault.clone()));
        }
        let journal = maps.inner.journal.len();
        let mut r = match i {
            0 => rec.apply(&mut maps, tracker.desired()),
            _ => rec.apply_changes(&mut maps, tracker.desired(), &changes),
        };
        writes.push(maps.inner.journal[journal..].to_vec());
        if faulted {
            trigger.0.set(None);
            assert!(!r.errors.is_empty(), "{what}: the failure is reported");
            // The agent's next turn, with nothing new from the source, finishes the job.
            r = rec.apply_changes(&mut maps, tracker.desired(), &Changes::default());
        }
        assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
        let refused: Vec<String> = r.refused.iter().map(|(s, _)| s.to_string()).collect();
        assert_eq!(refused, step.refused, "{what}: refused");
        let leftovers = maps.inner.leftovers();
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
        let read = Programmed::read(&maps).expect("read");
        assert_eq!(&read, rec.programmed(), "{what}: the reconciler's view");
        out.push(After {
            dump: dump(&maps),
            backends: backends(&maps.inner),
            refused,
        });
        clients_everywhere(&mut maps.inner);
    }
    (out, writes)
}

/// Each step's full apply (from the objects alone) on maps of its own.
fn run_full(case: &Case) -> Vec<After> {
    let mut maps = MemoryMaps::default();
    let mut rec = Reconciler::adopt(&maps, caps(case.capacities)).expect("adopt");
    let mut out = Vec::new();
    for step in case.steps {
        let objects = objects_of(&(step.yaml)()).expect("valid manifests");
        let r = rec.apply(&mut maps, &desired(&objects, &node()));
        assert!(r.errors.is_empty(), "{}: {:?}", case.name, r.errors);
        assert!(maps.leftovers().is_empty(), "{}", case.name);
        out.push(After {
            dump: dump(&maps),
            backends: backends(&maps),
            refused: r.refused.iter().map(|(s, _)| s.to_string()).collect(),
        });
        clients_everywhere(&mut maps);
    }
    out
}

#[test]
fn incremental_apply_matches_full_apply() {
    for case in CASES {
        let (incremental, _) = run(case, &Fault::None);
        assert_eq!(incremental, run_full(case), "{}", case.name);
        for (i, (step, after)) in case.steps.iter().zip(&incremental).enumerate() {
            let what = format!("{}, step {i}", case.name);
            if !step.backends.is_empty() {
                assert_eq!(after.backends, step.backends, "{what}: backends");
            }
            let mut from: Vec<String> = after
                .dump
                .iter()
                .filter_map(|l| l.find(" from ").map(|at| l[at..].to_string()))
                .collect();
            from.sort();
            from.dedup();
            assert_eq!(from, step.from, "{what}: source ranges");
        }
    }
}

/// Every write of every step failed in turn, and all of a step's writes at once.
#[test]
fn a_failed_write_leaves_the_maps_whole_and_the_next_apply_finishes() {
    let mut faults = 0;
    for case in CASES {
        let (clean, writes) = run(case, &Fault::None);
        for (step, step_writes) in writes.iter().enumerate() {
            let all = Fault::All { step };
            let all = (!step_writes.is_empty()).then_some(all);
            let one = step_writes.iter().map(|w| Fault::One {
                step,
                write: Box::new(w.clone()),
            });
            for fault in one.chain(all) {
                let (after, _) = run(case, &fault);
                assert_eq!(after, clean, "{}: {fault:?}", case.name);
                faults += 1;
            }
        }
    }
    // Every case's every step writes something.
    assert!(faults > 150, "{faults} faults injected");
}

#[test]
fn an_unchanged_state_is_not_rewritten_and_a_restart_adopts_the_maps() {
    let mut maps = MemoryMaps::default();
    let caps = caps(&[]);
    let mut rec = Reconciler::adopt(&maps, caps).expect("adopt");
    let objects = objects_of(&web(&["10.244.1.5", "10.244.1.6"])).expect("valid");
    let state = desired(&objects, &node());
    let first = rec.apply(&mut maps, &state);
    let written = (
        first.frontends_written,
        first.sets_written,
        first.backends_written,
    );
    assert_eq!(written, (4, 1, 2));
    assert_eq!(rec.apply(&mut maps, &state).writes(), 0);
    let mut adopted = Reconciler::adopt(&maps, caps).expect("adopt again");
    let journal = maps.journal.len();
    assert_eq!(adopted.apply(&mut maps, &state).writes(), 0);
    assert_eq!(maps.journal.len(), journal, "adoption writes nothing");

    // Entries deleted by hand come back at the next resync: a frontend, and a set's name (the
    // set is then foreign to lb: replaced by a set of its own).
    let before = dump(&maps);
    maps.frontends.pop_first();
    maps.names.pop_first();
    assert_ne!(dump(&maps), before);
    adopted.resync(&maps).expect("resync");
    let repaired = adopted.apply(&mut maps, &state);
    assert!(repaired.writes() >= 2, "{repaired:?}");
    assert_eq!(dump(&maps), before, "drift repaired");

    // One endpoint gone: the set and the backend change, no frontend is rewritten, and the
    // remaining backend keeps its id (conntrack entries name backends by id).
    let kept = |maps: &MemoryMaps| {
        let at = maps
            .backends
            .iter()
            .find(|(_, b)| b.addr == u32::from_ne_bytes([10, 244, 1, 6]));
        *at.expect("10.244.1.6 programmed").0
    };
    let id = kept(&maps);
    let objects = objects_of(&web(&["10.244.1.6"])).expect("valid");
    let r = adopted.apply(&mut maps, &desired(&objects, &node()));
    let written = (r.frontends_written, r.sets_written, r.backends_removed);
    assert_eq!(written, (0, 1, 1));
    assert_eq!(kept(&maps), id);

    // Everything removed: the maps are empty again, names included.
    let r = adopted.apply(&mut maps, &Default::default());
    let removed = (r.frontends_removed, r.sets_removed, r.backends_removed);
    assert_eq!(removed, (4, 1, 1));
    assert!(maps.frontends.is_empty() && maps.services.is_empty() && maps.slots.is_empty());
    assert!(maps.backends.is_empty() && maps.names.is_empty());
}
