//! The reconciler against real pinned maps: manifests in, map contents out (read back through
//! `dataplane::view`, as lbctl shows them), and what a second apply writes.
use lb::{
    dataplane::{
        reconcile::{Reconciler, Report},
        view, Capacities, Dataplane, Maps, Options,
    },
    model::{desired, Desired, NodeContext},
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
            format!(
                "{}:{} {} {}:{}/{} -> [{}]",
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
