use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::json;

use super::{Changes, Tracker};
use crate::model::{desired, NodeContext, ObjectRef, Objects};

fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec![Ipv4Addr::new(192, 0, 2, 10)],
    }
}

fn node6() -> NodeContext<Ipv6Addr> {
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec![node6_addr(0x10)],
    }
}

fn node6_addr(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

/// External addresses that collide: with each other, with the ClusterIPs of [`service`], and with
/// the NodePort address [`edit`] moves between .10 and .11.
const EXTERNAL: [&str; 3] = ["203.0.113.7", "10.96.0.11", "192.0.2.11"];
/// The same for the IPv6 addresses of dual-stack variants.
const EXTERNAL6: [&str; 3] = ["2001:db8:7::7", "fd00::11", "2001:db8::11"];

/// A Service; `variant` picks its address, type, policies, external addresses and age from a few
/// that collide.
fn service(name: &str, variant: u64) -> Arc<Service> {
    let ip = format!("10.96.0.{}", 10 + variant % 3);
    let mut spec = json!({
        "clusterIP": ip,
        "ports": [
            {"name": "http", "port": 80, "nodePort": 30080 + variant % 2},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
    });
    let mut status = json!({});
    if variant % 4 == 1 {
        spec["type"] = "LoadBalancer".into();
        spec["externalTrafficPolicy"] = "Local".into();
        spec["healthCheckNodePort"] = 32000.into();
        let ip = EXTERNAL[(variant / 4 % 3) as usize];
        status = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
    }
    if variant % 5 == 2 {
        spec["externalIPs"] = json!([EXTERNAL[(variant / 5 % 3) as usize]]);
        spec["internalTrafficPolicy"] = "Local".into();
    }
    if variant % 7 == 3 {
        spec["ports"][0]["port"] = 0.into(); // invalid: a problem
    }
    if variant % 17 == 6 {
        spec["clusterIP"] = "fd00::10".into(); // IPv6-only: the IPv6 model's alone
    } else if variant.is_multiple_of(3) {
        // Dual-stack: an IPv6 ClusterIP and an IPv6 externalIP that may collide too.
        spec["ipFamilies"] = json!(["IPv4", "IPv6"]);
        spec["clusterIPs"] = json!([ip, format!("fd00::{}", 10 + variant % 3)]);
        spec["externalIPs"] = json!([EXTERNAL6[(variant / 3 % 3) as usize]]);
    }
    let mut metadata = json!({"namespace": "ns", "name": name, "labels": {}});
    if variant % 11 == 4 {
        metadata["labels"]["service.kubernetes.io/headless"] = "".into();
    }
    if !variant.is_multiple_of(3) {
        let created = format!("2020-01-0{}T00:00:00Z", 1 + variant % 3);
        metadata["creationTimestamp"] = created.into();
    }
    Arc::new(
        serde_json::from_value(json!({"metadata": metadata, "spec": spec, "status": status}))
            .expect("a Service"),
    )
}

/// A slice of `service`; `variant` picks endpoints (shared between services) and conditions.
fn slice(name: &str, service: &str, variant: u64) -> Arc<EndpointSlice> {
    let ipv6 = variant % 4 == 3;
    let endpoints: Vec<_> = (0..1 + variant % 3)
        .map(|j| {
            let k = variant + j;
            let ip = match ipv6 {
                true => format!("fd00:244::{}", k % 6),
                false => format!("10.244.0.{}", k % 6),
            };
            let node = if k.is_multiple_of(2) {
                "node-a"
            } else {
                "node-b"
            };
            json!({
                "addresses": [ip],
                "nodeName": node,
                "zone": "z1",
                "conditions": {"ready": !k.is_multiple_of(5), "terminating": k.is_multiple_of(5)},
            })
        })
        .collect();
    let mut endpoints = endpoints;
    if variant % 13 == 5 {
        endpoints.push(json!({"addresses": ["x"], "nodeName": "node-a"})); // a problem
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {
                "namespace": "ns",
                "name": name,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": if ipv6 { "IPv6" } else { "IPv4" },
            "ports": [
                {"name": "http", "port": 8080 + variant % 2},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
            "endpoints": endpoints,
        }))
        .expect("an EndpointSlice"),
    )
}

fn node_object(zone: u64) -> Arc<Node> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": format!("z{zone}")}},
        }))
        .expect("a Node"),
    )
}

/// xorshift64: reproducible edits without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// One random edit: add, replace or delete a Service, a slice (maybe moved to another
/// service), the Node; or change the node's NodePort addresses (both families').
fn edit(
    objects: &mut Objects,
    node: &mut NodeContext,
    node6: &mut NodeContext<Ipv6Addr>,
    rng: &mut Rng,
) {
    let svc = format!("svc-{}", rng.next(4));
    let key = ObjectRef::new("ns", &svc);
    match rng.next(10) {
        0..=2 => {
            objects.services.insert(key, service(&svc, rng.next(100)));
        }
        3 => {
            objects.services.remove(&key);
        }
        4..=6 => {
            let name = format!("slice-{}", rng.next(6));
            let s = slice(&name, &svc, rng.next(100));
            objects.slices.insert(ObjectRef::new("ns", &name), s);
        }
        7 => {
            let name = format!("slice-{}", rng.next(6));
            objects.slices.remove(&ObjectRef::new("ns", &name));
        }
        8 => {
            objects
                .nodes
                .insert("node-a".into(), node_object(rng.next(2)));
        }
        _ => {
            let last = rng.next(2);
            node.nodeport_addrs = vec![Ipv4Addr::new(192, 0, 2, 10 + last as u8)];
            node6.nodeport_addrs = vec![node6_addr(0x10 + last as u16)];
        }
    }
}

#[test]
fn incremental_equals_from_scratch() {
    // The IPv6 model must have had something to do, or its half of the test proves nothing.
    let (mut backends6, mut refused6) = (0, 0);
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (mut tracker, mut tracker6) = (Tracker::default(), Tracker::default());
        let mut objects = Objects::default();
        let (mut node, mut node6) = (node(), node6());
        for step in 0..60 {
            let previous = objects.clone();
            edit(&mut objects, &mut node, &mut node6, &mut rng);
            tracker.update(&previous, &objects, &node);
            tracker6.update(&previous, &objects, &node6);
            assert_eq!(
                tracker.desired(),
                &desired(&objects, &node),
                "seed {seed}, step {step}"
            );
            assert_eq!(
                tracker6.desired(),
                &desired(&objects, &node6),
                "IPv6: seed {seed}, step {step}"
            );
            let d6 = tracker6.desired();
            backends6 += d6.sets.values().map(|s| s.backends.len()).sum::<usize>();
            refused6 += d6
                .problems
                .iter()
                .filter(|p| p.message.contains("8554"))
                .count();
        }
    }
    assert!(
        backends6 > 0 && refused6 > 0,
        "IPv6: {backends6} backends, {refused6} refusals"
    );
}

fn names(list: &[&str]) -> Vec<ObjectRef> {
    list.iter().map(|n| ObjectRef::new("ns", n)).collect()
}

struct Case {
    name: &'static str,
    /// Applied to the objects of `start` (svc-a and svc-b with a slice each).
    change: fn(&mut Objects, &mut NodeContext),
    /// Services reported changed.
    services: &'static [&'static str],
    node: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "nothing",
        change: |_, _| {},
        services: &[],
        node: false,
    },
    Case {
        name: "one slice changes: its service only",
        change: |o, _| {
            o.slices
                .insert(ObjectRef::new("ns", "a-1"), slice("a-1", "svc-a", 1));
        },
        services: &["svc-a"],
        node: false,
    },
    Case {
        name: "an equal slice in a new Arc still counts (pointer comparison)",
        change: |o, _| {
            o.slices
                .insert(ObjectRef::new("ns", "a-1"), slice("a-1", "svc-a", 0));
        },
        services: &["svc-a"],
        node: false,
    },
    Case {
        name: "a slice moves to another service: both",
        change: |o, _| {
            o.slices
                .insert(ObjectRef::new("ns", "a-1"), slice("a-1", "svc-b", 0));
        },
        services: &["svc-a", "svc-b"],
        node: false,
    },
    Case {
        name: "a Service is deleted",
        change: |o, _| {
            o.services.remove(&ObjectRef::new("ns", "svc-b"));
        },
        services: &["svc-b"],
        node: false,
    },
    Case {
        name: "a new Service claims another's ClusterIP: the older keeps it",
        change: |o, _| {
            // svc-c, as old as svc-a (no creationTimestamp) but after it by name, loses.
            o.services
                .insert(ObjectRef::new("ns", "svc-c"), service("svc-c", 3 * 7 * 4));
        },
        services: &["svc-c"],
        node: false,
    },
    Case {
        name: "a slice with no Service",
        change: |o, _| {
            o.slices
                .insert(ObjectRef::new("ns", "x-1"), slice("x-1", "svc-x", 0));
        },
        services: &["svc-x"],
        node: false,
    },
    Case {
        name: "the node's addresses: everything",
        change: |_, n| n.nodeport_addrs = vec![Ipv4Addr::new(192, 0, 2, 11)],
        services: &["svc-a", "svc-b"],
        node: true,
    },
    Case {
        name: "the node's zone: everything",
        change: |o, _| {
            o.nodes.insert("node-a".into(), node_object(2));
        },
        services: &["svc-a", "svc-b"],
        node: true,
    },
];

#[test]
fn changes() {
    // Different addresses and NodePorts, disjoint endpoints: nothing shared.
    let mut start = Objects::default();
    for (svc, variant, slice_name, slice_variant) in
        [("svc-a", 0, "a-1", 0), ("svc-b", 5, "b-1", 3)]
    {
        start
            .services
            .insert(ObjectRef::new("ns", svc), service(svc, variant));
        let s = slice(slice_name, svc, slice_variant);
        start.slices.insert(ObjectRef::new("ns", slice_name), s);
    }
    for case in CASES {
        let mut tracker = Tracker::default();
        tracker.update(&Objects::default(), &start, &node());
        let (mut objects, mut node) = (start.clone(), node());
        (case.change)(&mut objects, &mut node);
        let got: Changes = tracker.update(&start, &objects, &node);
        let services: Vec<ObjectRef> = got.services.keys().cloned().collect();
        assert_eq!(services, names(case.services), "{}", case.name);
        assert_eq!(got.node, case.node, "{}", case.name);
        for (name, won) in &got.services {
            for key in won {
                let fe = &tracker.desired().frontends[key];
                assert_eq!(&fe.set.service, name, "{}: {key:?}", case.name);
            }
        }
        assert_eq!(
            tracker.desired(),
            &desired(&objects, &node),
            "{}",
            case.name
        );
    }
}
