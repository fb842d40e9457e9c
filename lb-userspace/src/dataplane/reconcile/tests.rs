//! The reconciler on in-memory maps, without root, driven by scripts in the style of Cilium's
//! pkg/loadbalancer txtar tests: `testdata/reconcile/*.txt` apply Service and EndpointSlice YAML
//! step by step and hold the maps expected after each step (the `lbctl services` rows of both
//! families, the backends, the services refused and the write counts). Each script runs three
//! ways:
//! - as the agent runs it (tracker changes, incremental applies): must match the script;
//! - as full applies of each step's objects alone: must leave the same maps, writing as much;
//! - with every write of every step failed in turn, and all of a step's writes at once: the fake
//!   checks after each write that no packet could meet a dangling reference, and the next apply
//!   must leave the script's maps with nothing stale behind (affinity entries included: a client
//!   is stuck to every backend between steps).
//!
//! The model goldens' inputs (`testdata/model/*/input.yaml`) are applied too, their maps kept
//! beside them in `maps.txt`. `LB_UPDATE_GOLDEN=1 cargo test -p lb-userspace reconcile` rewrites
//! the expectations (review the diff before committing it).
use std::cell::Cell;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use lb_common::{capacity, map_names, Affinity, Affinity6, AffinityKey4, AffinityKey6};

use super::{
    fake::{Faulty, MemoryMaps},
    DualMaps, KernelFamily, Programmed, Reconciler, Report, Served, ServiceMaps,
};
use crate::{
    dataplane::{
        maps::Capacities,
        view::{self, BackendView},
    },
    model::{desired, golden::testdata, Changes, Family, NodeContext, Objects, Tracker},
    source::manifests::objects_of,
};

/// The node's context in family `A` (a NodePort address of each family).
fn node<A: Family>() -> NodeContext<A> {
    let addr = match A::NAME {
        "IPv4" => "192.0.2.10",
        _ => "2001:db8::10",
    };
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: A::of(addr.parse().unwrap()).into_iter().collect(),
    }
}

/// Both families' models of the same objects, kept as the agent keeps them.
#[derive(Default)]
struct Trackers {
    v4: Tracker<Ipv4Addr>,
    v6: Tracker<Ipv6Addr>,
}

/// One family's part of a step: its tracker's changes applied (the whole state at `whole`).
fn step<A: Served, M: ServiceMaps<A>>(
    rec: &mut Reconciler,
    maps: &mut M,
    tracker: &mut Tracker<A>,
    (before, after): (&Objects, &Objects),
    whole: bool,
) -> Report {
    let changes = tracker.update(before, after, &node());
    match whole {
        true => rec.apply(maps, tracker.desired()),
        false => rec.apply_changes(maps, tracker.desired(), &changes),
    }
}

/// The agent's next turn with nothing new from the source, in both families.
fn retry(rec: &mut Reconciler, maps: &mut impl DualMaps, trackers: &Trackers) -> Report {
    let v4 = rec.apply_changes(maps, trackers.v4.desired(), &Changes::default());
    v4.and(rec.apply_changes(maps, trackers.v6.desired(), &Changes::default()))
}

/// Both families' desired state of `objects`, applied whole.
fn apply_whole(rec: &mut Reconciler, maps: &mut MemoryMaps, objects: &Objects) -> Report {
    let v4 = rec.apply(maps, &desired::<Ipv4Addr>(objects, &node()));
    v4.and(rec.apply(maps, &desired::<Ipv6Addr>(objects, &node())))
}

/// The reconciler's view of each family is what the maps hold.
fn believes_the_maps(rec: &Reconciler, maps: &MemoryMaps, what: &str) {
    let v4 = Programmed::<Ipv4Addr>::read(maps).expect("read");
    assert_eq!(&v4, rec.programmed(), "{what}: the reconciler's IPv4 view");
    let v6 = Programmed::<Ipv6Addr>::read(maps).expect("read");
    assert_eq!(&v6, rec.programmed(), "{what}: the reconciler's IPv6 view");
}

fn caps(overrides: &[(String, u32)]) -> Capacities {
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
            if Ipv4Addr::IDS.contains(&set) {
                let key = AffinityKey4 {
                    service_id: set,
                    client: backend,
                };
                let entry = Affinity {
                    backend_id: backend,
                    ..Default::default()
                };
                maps.v4.affinity.insert(key, entry);
            } else {
                let key = AffinityKey6 {
                    service_id: set,
                    client: [backend, 0, 0, 0],
                    by: lb_common::AFFINITY_BY_ADDR,
                };
                let entry = Affinity6 {
                    backend_id: backend,
                    ..Default::default()
                };
                maps.v6.affinity.insert(key, entry);
            }
        }
    }
}

/// A script: map sizes, then steps of objects and the maps expected after each.
struct Script {
    path: PathBuf,
    /// The lines before the first step (comments, `caps NAME=SIZE`).
    head: String,
    caps: Vec<(String, u32)>,
    /// A `contended` line: the families compete for shared room, and which one wins may change
    /// when a write fails (the other family is applied meanwhile). Faulted runs of it must
    /// leave the maps whole, not the same.
    contended: bool,
    steps: Vec<(String, String)>,
}

impl Script {
    fn read(path: &Path) -> Script {
        let text = std::fs::read_to_string(path).expect("script");
        let mut head = String::new();
        let mut steps: Vec<(String, String)> = Vec::new();
        let mut section = "";
        for line in text.lines() {
            match line {
                "-- apply --" => steps.push(Default::default()),
                "-- maps --" => {}
                _ => {
                    let body = match (section, steps.last_mut()) {
                        ("-- apply --", Some(step)) => &mut step.0,
                        ("-- maps --", Some(step)) => &mut step.1,
                        _ => &mut head,
                    };
                    body.push_str(line);
                    body.push('\n');
                    continue;
                }
            }
            section = line;
        }
        let caps = head
            .lines()
            .filter_map(|l| l.strip_prefix("caps "))
            .flat_map(|l| l.split_whitespace())
            .map(|c| {
                let (name, size) = c.split_once('=').expect("caps NAME=SIZE");
                (name.to_string(), size.parse().expect("a size"))
            })
            .collect();
        Script {
            path: path.to_path_buf(),
            contended: head.lines().any(|l| l == "contended"),
            head,
            caps,
            steps,
        }
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The script with these maps expected.
    fn with(&self, maps: &[String]) -> String {
        let mut out = self.head.clone();
        for ((yaml, _), maps) in self.steps.iter().zip(maps) {
            let _ = write!(out, "-- apply --\n{yaml}-- maps --\n{maps}");
        }
        out
    }
}

fn scripts() -> Vec<Script> {
    testdata("reconcile")
        .iter()
        .map(|p| Script::read(p))
        .collect()
}

fn backend_text(b: &BackendView) -> String {
    let local = if b.local { " local" } else { "" };
    let terminating = if b.terminating { " terminating" } else { "" };
    let addr = std::net::SocketAddr::new(b.ip, b.port);
    format!("{addr}{local}{terminating}")
}

/// The maps as lines: one per frontend entry (`lbctl services` rows, both scopes and both
/// families), then one per backend, then the services refused.
fn render(maps: &MemoryMaps, report: &Report) -> String {
    let mut out = String::new();
    let v4 = Programmed::<Ipv4Addr>::read(maps).expect("read maps");
    let v6 = Programmed::<Ipv6Addr>::read(maps).expect("read maps");
    for r in view::frontends(maps).expect("read maps") {
        let f = &r.frontend;
        let backends: Vec<String> = r.backends.iter().map(backend_text).collect();
        let _ = write!(
            out,
            "{} {}/{} {} -> {}:{} [{}]",
            f.scope,
            std::net::SocketAddr::new(f.ip, f.port),
            f.protocol,
            f.kind,
            r.service,
            r.port_name,
            backends.join(" ")
        );
        if r.backends.is_empty() {
            let set = v4.sets.get(&r.service_id).or(v6.sets.get(&r.service_id));
            let verdict = set.map(|s| s.service.verdict);
            let verdict = match verdict {
                Some(lb_common::VERDICT_DROP) => "drop",
                Some(lb_common::VERDICT_REJECT) => "reject",
                _ => "?",
            };
            let _ = write!(out, " {verdict}");
        }
        if let Some(timeout) = r.session_affinity_timeout {
            let _ = write!(out, " affinity={timeout}");
        }
        if r.external_traffic_local || r.internal_traffic_local {
            let (e, i) = (r.external_traffic_local, r.internal_traffic_local);
            let _ = write!(out, " local(external={e}, internal={i})");
        }
        if !r.source_ranges.is_empty() {
            let _ = write!(out, " from {}", r.source_ranges.join(","));
        }
        out.push('\n');
    }
    let mut rows: Vec<BackendView> = v4
        .backends
        .values()
        .map(BackendView::of::<Ipv4Addr>)
        .collect();
    rows.extend(v6.backends.values().map(BackendView::of::<Ipv6Addr>));
    rows.sort();
    for b in rows {
        let _ = writeln!(out, "backend {}", backend_text(&b));
    }
    for (service, map) in &report.refused {
        let _ = writeln!(out, "refused {service} ({map} is full)");
    }
    out
}

fn writes(r: &Report) -> String {
    format!(
        "writes: frontends +{} -{}, sets +{} -{}, backends +{} -{}\n",
        r.frontends_written,
        r.frontends_removed,
        r.sets_written,
        r.sets_removed,
        r.backends_written,
        r.backends_removed
    )
}

/// Which writes of a run fail.
#[derive(Clone, Debug)]
enum Fault {
    None,
    /// At step `step`, the first write shown as `write`.
    One {
        step: usize,
        write: String,
    },
    /// At step `step`, every write.
    All {
        step: usize,
    },
}

/// What the maps showed after a step (after the recovery apply, at a faulted step).
#[derive(Debug, PartialEq)]
struct After {
    /// The maps as `render` shows them, refusals included.
    maps: String,
    /// The writes of the step, counted as the report counts them.
    writes: String,
}

/// Armed by the run at the faulted step; read by the faulty maps' predicate.
#[derive(Clone, Default)]
struct Trigger(Rc<Cell<Option<Fault>>>);

impl Trigger {
    fn fires(&self, write: &str) -> bool {
        let fault = self.0.take();
        let fires = match &fault {
            Some(Fault::One { write: w, .. }) => w == write,
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

/// Run a script's steps as the agent does, with `fault`; also returns each step's writes.
fn run(script: &Script, fault: &Fault) -> (Vec<After>, Vec<Vec<String>>) {
    let trigger = Trigger::default();
    let fires = trigger.clone();
    let mut maps = Faulty::new(MemoryMaps::default(), move |_, w| fires.fires(w));
    let mut rec = Reconciler::adopt(&maps, caps(&script.caps)).expect("adopt");
    let mut trackers = Trackers::default();
    let mut objects = Objects::default();
    let (mut out, mut journals) = (Vec::new(), Vec::new());
    for (i, (yaml, _)) in script.steps.iter().enumerate() {
        let what = format!("{}, step {i}, {fault:?}", script.name());
        let next = objects_after(&objects, yaml);
        let faulted = match fault {
            Fault::One { step, .. } | Fault::All { step } => *step == i,
            Fault::None => false,
        };
        if faulted {
            trigger.0.set(Some(fault.clone()));
        }
        let journal = maps.inner.journal.len();
        let objs = (&objects, &next);
        let v4 = step(&mut rec, &mut maps, &mut trackers.v4, objs, i == 0);
        let mut r = v4.and(step(&mut rec, &mut maps, &mut trackers.v6, objs, i == 0));
        objects = next;
        journals.push(maps.inner.journal[journal..].to_vec());
        if faulted {
            trigger.0.set(None);
            assert!(!r.errors.is_empty(), "{what}: the failure is reported");
            // The agent's next turn, with nothing new from the source, finishes the job.
            r = retry(&mut rec, &mut maps, &trackers);
        }
        assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
        // A family that failed and then lost the room keeps the name its failed write left:
        // it reserves the set's id for when the service fits (and goes with the Service).
        let leftovers = match faulted && script.contended {
            true => maps.inner.dangling(),
            false => maps.inner.leftovers(),
        };
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
        believes_the_maps(&rec, &maps.inner, &what);
        out.push(After {
            maps: render(&maps.inner, &r),
            writes: writes(&r),
        });
        clients_everywhere(&mut maps.inner);
    }
    (out, journals)
}

/// Each step's objects applied whole to the maps the previous step left.
fn run_full(script: &Script) -> Vec<After> {
    let mut maps = MemoryMaps::default();
    let mut rec = Reconciler::adopt(&maps, caps(&script.caps)).expect("adopt");
    let mut out = Vec::new();
    for (yaml, _) in &script.steps {
        let objects = objects_of(yaml).expect("valid manifests");
        let r = apply_whole(&mut rec, &mut maps, &objects);
        assert!(r.errors.is_empty(), "{}: {:?}", script.name(), r.errors);
        assert!(maps.leftovers().is_empty(), "{}", script.name());
        out.push(After {
            maps: render(&maps, &r),
            writes: writes(&r),
        });
        clients_everywhere(&mut maps);
    }
    out
}

fn update() -> bool {
    std::env::var_os("LB_UPDATE_GOLDEN").is_some()
}

#[test]
fn scripts_leave_the_maps_they_expect_incrementally_and_in_full() {
    let scripts = scripts();
    assert!(scripts.len() >= 6);
    for script in &scripts {
        let (incremental, _) = run(script, &Fault::None);
        let got: Vec<String> = incremental
            .iter()
            .map(|a| format!("{}{}", a.writes, a.maps))
            .collect();
        if update() {
            std::fs::write(&script.path, script.with(&got)).expect("write script");
            continue;
        }
        for (i, ((_, expected), got)) in script.steps.iter().zip(&got).enumerate() {
            assert_eq!(got, expected, "{}, step {i}", script.name());
        }
        assert_eq!(
            run_full(script),
            incremental,
            "{}: full applies",
            script.name()
        );
    }
}

/// Every write of every step failed in turn, and all of a step's writes at once.
#[test]
fn a_failed_write_leaves_the_maps_whole_and_the_next_apply_finishes() {
    let mut faults = 0;
    for script in &scripts() {
        let (clean, journals) = run(script, &Fault::None);
        for (step, journal) in journals.iter().enumerate() {
            let all = (!journal.is_empty()).then_some(Fault::All { step });
            let one = journal.iter().map(|w| Fault::One {
                step,
                write: w.clone(),
            });
            for fault in one.chain(all) {
                let (after, _) = run(script, &fault);
                let maps = |a: &[After]| a.iter().map(|a| a.maps.clone()).collect::<Vec<_>>();
                if !script.contended {
                    assert_eq!(maps(&after), maps(&clean), "{}: {fault:?}", script.name());
                }
                faults += 1;
            }
        }
    }
    assert!(faults > 150, "{faults} faults injected");
}

/// The model goldens' inputs programmed: `testdata/model/*/maps.txt` beside their `expected.txt`
/// (what the model wants) shows what the maps then hold.
#[test]
fn model_goldens_program_the_maps_they_show() {
    for case in testdata("model") {
        let yaml = std::fs::read_to_string(case.join("input.yaml")).expect("input.yaml");
        // A case whose input does not parse whole shows the model's problems only.
        let Ok(objects) = objects_of(&yaml) else {
            continue;
        };
        let mut maps = MemoryMaps::default();
        let mut rec = Reconciler::adopt(&maps, caps(&[])).expect("adopt");
        let r = apply_whole(&mut rec, &mut maps, &objects);
        assert!(r.errors.is_empty(), "{}: {:?}", case.display(), r.errors);
        assert!(maps.leftovers().is_empty(), "{}", case.display());
        let got = render(&maps, &r);
        let path = case.join("maps.txt");
        if update() {
            std::fs::write(&path, &got).expect("write maps.txt");
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(got, expected, "{}", path.display());
    }
}

#[test]
fn an_unchanged_state_is_not_rewritten_and_a_restart_adopts_the_maps() {
    let mut maps = MemoryMaps::default();
    let caps = caps(&[]);
    let mut rec = Reconciler::adopt(&maps, caps).expect("adopt");
    let objects = objects_of(&web(&["10.244.1.5", "10.244.1.6"])).expect("valid");
    let state = desired::<Ipv4Addr>(&objects, &node());
    let first = rec.apply(&mut maps, &state);
    let written = (
        first.frontends_written,
        first.sets_written,
        first.backends_written,
    );
    assert_eq!(written, (4, 1, 2));
    assert_eq!(rec.apply(&mut maps, &state).writes(), 0);
    let mut adopted = Reconciler::adopt(&maps, caps).expect("adopt again");
    assert!(
        !adopted.resync(&maps).expect("resync"),
        "no drift: nothing to redo"
    );
    let journal = maps.journal.len();
    assert_eq!(adopted.apply(&mut maps, &state).writes(), 0);
    assert_eq!(maps.journal.len(), journal, "adoption writes nothing");

    // Entries deleted by hand come back at the next resync: a frontend, and a set's name (the
    // set is then foreign to lb: replaced by a set of its own).
    let before = render(&maps, &Report::default());
    maps.v4.frontends.pop_first();
    maps.names.pop_first();
    assert_ne!(render(&maps, &Report::default()), before);
    assert!(adopted.resync(&maps).expect("resync"), "drift found");
    let repaired = adopted.apply(&mut maps, &state);
    assert!(repaired.writes() >= 2, "{repaired:?}");
    assert_eq!(render(&maps, &Report::default()), before, "drift repaired");

    // One endpoint gone: the set and the backend change, no frontend is rewritten, and the
    // remaining backend keeps its id (conntrack entries name backends by id).
    let kept = |maps: &MemoryMaps| {
        let at = maps
            .v4
            .backends
            .iter()
            .find(|(_, b)| b.addr == u32::from_ne_bytes([10, 244, 1, 6]));
        *at.expect("10.244.1.6 programmed").0
    };
    let id = kept(&maps);
    let objects = objects_of(&web(&["10.244.1.6"])).expect("valid");
    let r = adopted.apply(&mut maps, &desired::<Ipv4Addr>(&objects, &node()));
    let written = (r.frontends_written, r.sets_written, r.backends_removed);
    assert_eq!(written, (0, 1, 1));
    assert_eq!(kept(&maps), id);

    // Everything removed: the maps are empty again, names included.
    let r = adopted.apply(&mut maps, &crate::model::Desired::<Ipv4Addr>::default());
    let removed = (r.frontends_removed, r.sets_removed, r.backends_removed);
    assert_eq!(removed, (4, 1, 1));
    assert!(maps.v4.frontends.is_empty() && maps.services.is_empty() && maps.slots.is_empty());
    assert!(maps.v4.backends.is_empty() && maps.names.is_empty());
}
