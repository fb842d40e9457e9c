//! The reconciler against real pinned maps, for what only the kernel shows. Its ordering, fault
//! and incremental-versus-full tests run without root on the in-memory fake (lb-userspace's
//! dataplane::reconcile::tests); this checks that the pinned maps hold what the fake holds.
use std::path::PathBuf;

use lb::{
    dataplane::{
        maps::entries,
        reconcile::{fake::MemoryMaps, Programmed, Reconciler, Report, Write},
        Capacities, Dataplane, Options, ServiceMaps as _,
    },
    model::{desired, Desired, NodeContext},
    source::manifests::objects_of,
};
use lb_common::{map_names, SlotKey};
use lb_tests::lab::{require_privileged, Lab};

/// The node of the model goldens (lb-userspace/src/model/golden.rs).
fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec!["192.0.2.10".parse().unwrap()],
    }
}

fn want(yaml: &str) -> Desired {
    desired(&objects_of(yaml).expect("valid manifests"), &node())
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

fn apply(rec: &mut Reconciler, dp: &mut Dataplane, d: &Desired) -> Report {
    let report = rec.apply(&mut dp.maps, d);
    assert!(report.errors.is_empty(), "map errors: {:?}", report.errors);
    report
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
    for (name, yaml) in steps {
        let state = want(&yaml);
        apply(&mut kernel_rec, &mut dp, &state);
        let r = fake_rec.apply(&mut fake, &state);
        assert!(r.errors.is_empty(), "{name}: {:?}", r.errors);
        assert!(
            fake.leftovers().is_empty(),
            "{name}: {:?}",
            fake.leftovers()
        );
        let kernel = Programmed::read(&dp.maps).expect("read the kernel maps");
        assert!(!kernel.frontends.is_empty(), "{name}");
        assert_eq!(kernel, Programmed::read(&fake).unwrap(), "{name}");
        assert_eq!(&kernel, kernel_rec.programmed(), "{name}");
        // Read back in batches, the maps hold what was written: the periodic check finds no
        // drift (and so plans nothing).
        assert!(!kernel_rec.resync(&dp.maps).expect("resync"), "{name}");
    }

    let backend = *fake.backends.keys().next().expect("a backend");
    let orphan = SlotKey {
        service_id: 999_999,
        slot: 3,
    };
    dp.maps.write(&Write::Slot(orphan, backend)).expect("slot");
    fake.slots.insert(orphan, backend);
    assert_eq!(Programmed::read(&dp.maps).unwrap().orphan_slots, [orphan]);
    assert_eq!(Programmed::read(&fake).unwrap().orphan_slots, [orphan]);
    assert!(kernel_rec.resync(&dp.maps).expect("resync"), "drift found");
    assert!(fake_rec.resync(&fake).expect("resync"), "drift found");
    let state = want(&inputs[0].1);
    apply(&mut kernel_rec, &mut dp, &state);
    fake_rec.apply(&mut fake, &state);
    assert!(fake.leftovers().is_empty(), "{:?}", fake.leftovers());
    let kernel = Programmed::read(&dp.maps).expect("read the kernel maps");
    assert!(kernel.orphan_slots.is_empty());
    assert_eq!(kernel, Programmed::read(&fake).unwrap());
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
        apply(&mut adopted, &mut dp, &state).writes(),
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
