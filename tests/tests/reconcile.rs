//! The reconciler against real pinned maps, for what only the kernel shows. Its ordering, fault
//! and incremental-versus-full tests run without root on the in-memory fake (lb-userspace's
//! dataplane::reconcile::tests); this checks that the pinned maps hold what the fake holds.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use lb::{
    dataplane::{
        maps::entries,
        reconcile::{fake::MemoryMaps, Programmed, Reconciler, Report, Write},
        Capacities, Dataplane, Options, ServiceMaps,
    },
    model::{desired, Desired, Family, NodeContext},
    source::manifests::objects_of,
};
use lb_common::{map_names, SlotKey};
use lb_tests::lab::{require_privileged, Lab};

/// The node of the model goldens (lb-userspace/src/model/golden.rs), in family `A`.
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

/// What each family's maps should hold for `yaml`.
struct Want {
    v4: Desired<Ipv4Addr>,
    v6: Desired<Ipv6Addr>,
}

fn want(yaml: &str) -> Want {
    let objects = objects_of(yaml).expect("valid manifests");
    Want {
        v4: desired(&objects, &node()),
        v6: desired(&objects, &node()),
    }
}

/// The model goldens' inputs (lb-userspace/testdata/model/*/input.yaml) that parse whole,
/// by name, sorted: affinity, Local policies, terminating endpoints, externalIPs, NodePorts.
fn inputs() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lb-userspace/testdata/model");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("testdata")
        .map(|e| e.expect("entry").path())
        .filter_map(|case| {
            let yaml = std::fs::read_to_string(case.join("input.yaml")).ok()?;
            objects_of(&yaml).ok()?;
            let name = case.file_name()?.to_string_lossy().into_owned();
            Some((name, yaml))
        })
        .collect();
    out.sort();
    out
}

fn open(lab: &Lab, name: &str) -> Dataplane {
    let opts = Options {
        pin_path: lab.pin_path(name),
        capacities: Vec::new(),
    };
    Dataplane::open(&opts).expect("dataplane")
}

/// Both families on the kernel maps; returns how many writes that took.
fn apply(rec: &mut Reconciler, dp: &mut Dataplane, d: &Want) -> usize {
    let reports = [
        rec.apply(&mut dp.maps, &d.v4),
        rec.apply(&mut dp.maps, &d.v6),
    ];
    for r in &reports {
        assert!(r.errors.is_empty(), "map errors: {:?}", r.errors);
    }
    reports.iter().map(Report::writes).sum()
}

fn apply_fake(rec: &mut Reconciler, fake: &mut MemoryMaps, d: &Want, name: &str) {
    let r = rec.apply(fake, &d.v4);
    assert!(r.errors.is_empty(), "{name}: {:?}", r.errors);
    let r = rec.apply(fake, &d.v6);
    assert!(r.errors.is_empty(), "{name}: {:?}", r.errors);
    assert!(
        fake.leftovers().is_empty(),
        "{name}: {:?}",
        fake.leftovers()
    );
}

/// Both families read back from the kernel maps equal the fake's and the reconciler's.
fn same_as_fake(dp: &Dataplane, fake: &MemoryMaps, rec: &Reconciler, name: &str) {
    let kernel = Programmed::<Ipv4Addr>::read(&dp.maps).expect("read the kernel maps");
    assert_eq!(kernel, Programmed::read(fake).unwrap(), "{name}");
    assert_eq!(&kernel, rec.programmed(), "{name}");
    let kernel = Programmed::<Ipv6Addr>::read(&dp.maps).expect("read the kernel maps");
    assert_eq!(kernel, Programmed::read(fake).unwrap(), "{name}");
    assert_eq!(&kernel, rec.programmed(), "{name}");
}

/// Every golden input in turn (each replacing the last, so services come, change and go), then
/// all at once, on pinned maps and on the fake: both read back the same entries, ids included.
/// A slot no set shows (what a removal that failed half-way leaves) is found in both and
/// removed by the next apply.
#[test]
fn the_kernel_maps_hold_what_the_in_memory_fake_holds() {
    if !require_privileged("reconcile::fake") {
        return;
    }
    let lab = Lab::new("reconcile-fake").expect("lab");
    let mut dp = open(&lab, "node");
    let caps = Capacities::read(dp.layout()).expect("capacities");
    let mut fake = MemoryMaps::default();
    let mut kernel_rec = Reconciler::adopt(&dp.maps, caps).expect("adopt");
    let mut fake_rec = Reconciler::adopt(&fake, caps).expect("adopt");
    let inputs = inputs();
    assert!(inputs.len() >= 5, "{inputs:?}");
    let all: String = inputs.iter().map(|(_, y)| format!("---\n{y}\n")).collect();
    let steps = inputs.iter().cloned().chain([("all".to_string(), all)]);
    let mut ipv6_seen = false;
    for (name, yaml) in steps {
        let state = want(&yaml);
        apply(&mut kernel_rec, &mut dp, &state);
        apply_fake(&mut fake_rec, &mut fake, &state, &name);
        let kernel = Programmed::<Ipv4Addr>::read(&dp.maps).expect("read the kernel maps");
        assert!(!kernel.frontends.is_empty(), "{name}");
        let v6 = Programmed::<Ipv6Addr>::read(&dp.maps).expect("read the kernel maps");
        ipv6_seen |= !v6.ranges.is_empty();
        same_as_fake(&dp, &fake, &kernel_rec, &name);
        // Read back in batches, the maps hold what was written: the periodic check finds no
        // drift (and so plans nothing).
        assert!(!kernel_rec.resync(&dp.maps).expect("resync"), "{name}");
    }

    assert!(
        ipv6_seen,
        "an IPv6 frontend with source ranges was programmed"
    );

    let backend = *fake.v4.backends.keys().next().expect("a backend");
    let orphan = SlotKey {
        service_id: 999_999,
        slot: 3,
    };
    dp.maps
        .write(&Write::<Ipv4Addr>::Slot(orphan, backend))
        .expect("slot");
    fake.slots.insert(orphan, backend);
    let orphans = |p: Programmed<Ipv4Addr>| p.orphan_slots;
    assert_eq!(orphans(Programmed::read(&dp.maps).unwrap()), [orphan]);
    assert_eq!(orphans(Programmed::read(&fake).unwrap()), [orphan]);
    assert!(kernel_rec.resync(&dp.maps).expect("resync"), "drift found");
    assert!(fake_rec.resync(&fake).expect("resync"), "drift found");
    let state = want(&inputs[0].1);
    apply(&mut kernel_rec, &mut dp, &state);
    apply_fake(&mut fake_rec, &mut fake, &state, "after the orphan");
    assert!(orphans(Programmed::read(&dp.maps).unwrap()).is_empty());
    same_as_fake(&dp, &fake, &kernel_rec, "after the orphan");
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
    let mut dp = open(&lab, "node");
    let caps = Capacities::read(dp.layout()).expect("capacities");
    let mut rec = Reconciler::adopt(&dp.maps, caps).expect("adopt");
    let state = want(&inputs()[0].1);
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

    let mut dp = open(&lab, "node");
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
        apply(&mut adopted, &mut dp, &state),
        0,
        "the upgraded agent rewrites nothing"
    );
}

/// A map pinned under one of lb's names with another layout (what a build that changed a value
/// without moving the map version would leave) is refused at open, naming the map and the field;
/// nothing is adopted, nothing removed.
#[test]
fn a_pinned_map_of_another_shape_is_refused_naming_it() {
    if !require_privileged("reconcile::compat") {
        return;
    }
    use aya::maps::{HashMap, MapData};
    let lab = Lab::new("reconcile-compat").expect("lab");
    let layout = open(&lab, "node").layout().clone();
    let path = layout.map(map_names::BACKENDS4);
    std::fs::remove_file(&path).expect("unpin the backends map");
    // LB4_BACKENDS holds 8-byte values.
    let other: HashMap<MapData, u32, [u8; 12]> = HashMap::create(64, 0).expect("a map");
    other.pin(&path).expect("pin it in its place");
    let refused = Dataplane::open(&Options {
        pin_path: lab.pin_path("node"),
        capacities: Vec::new(),
    });
    let msg = format!("{:#}", refused.err().expect("refused"));
    assert!(msg.contains(map_names::BACKENDS4), "{msg}");
    assert!(
        msg.contains("value size 12 pinned, 8 in this build"),
        "{msg}"
    );
    assert!(path.exists(), "the pinned map is left alone");
}
