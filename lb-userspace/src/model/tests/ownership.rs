//! Who holds a frontend several Services claim, in the style of kube-proxy's table tests
//! (TestCategorizeEndpoints): a ClusterIP or NodePort belongs to the Service it was allocated to;
//! an externalIP or LoadBalancer IP that is another Service's ClusterIP or this node's address is
//! refused and reported (CVE-2020-8554); other ties go to the oldest Service (creationTimestamp,
//! then namespace/name), a Service without a creationTimestamp counting as the newest.
//!
//! Each case adds its Services one by one in the order listed (an update of one tracker each, so
//! the incremental path is what is checked), then deletes `removed` one by one; then it checks
//! who holds each frontend named, from outside the node and from its pods, the problems reported,
//! and that computing from scratch gives the same.
use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};

use crate::model::{
    desired, FrontendKey, NodeContext, ObjectRef, Objects, Protocol, Scope, Tracker,
};

/// This node's address, which serves NodePorts.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

#[derive(Clone, Copy)]
struct Svc {
    /// "namespace/name".
    name: &'static str,
    /// metadata.creationTimestamp; "" for none.
    created: &'static str,
    cluster_ip: &'static str,
    external_ips: &'static [&'static str],
    /// status.loadBalancer.ingress IPs (the type is LoadBalancer when there are some).
    lb_ips: &'static [&'static str],
    /// (port, protocol, nodePort or 0).
    ports: &'static [(u16, &'static str, u16)],
    /// Labelled for another proxy: lb does not serve it.
    other_proxy: bool,
}

const SVC: Svc = Svc {
    name: "",
    created: "",
    cluster_ip: "",
    external_ips: &[],
    lb_ips: &[],
    ports: &[],
    other_proxy: false,
};

const KUBE_DNS: Svc = Svc {
    name: "kube-system/kube-dns",
    created: "2021-01-01T00:00:00Z",
    cluster_ip: "10.96.0.10",
    ports: &[(53, "UDP", 0), (53, "TCP", 0)],
    ..SVC
};

/// Older than kube-dns and first by name: neither may win it the address.
const ATTACKER: Svc = Svc {
    name: "aa/attacker",
    created: "2020-01-01T00:00:00Z",
    cluster_ip: "10.96.9.9",
    external_ips: &["10.96.0.10"],
    ports: &[(53, "UDP", 0)],
    ..SVC
};

const WEB: Svc = Svc {
    name: "default/web",
    created: "2021-01-01T00:00:00Z",
    cluster_ip: "10.96.1.1",
    ports: &[(80, "TCP", 30080)],
    ..SVC
};

/// Two Services on one externalIP:port; the older one last by name.
const OLDER: Svc = Svc {
    name: "zz/older",
    created: "2020-01-01T00:00:00Z",
    cluster_ip: "10.96.2.1",
    external_ips: &["198.51.100.7"],
    ports: &[(80, "TCP", 0)],
    ..SVC
};

const NEWER: Svc = Svc {
    name: "aa/newer",
    created: "2020-01-01T00:00:01Z",
    cluster_ip: "10.96.2.2",
    ..OLDER
};

struct Case {
    name: &'static str,
    /// Added in this order.
    services: &'static [Svc],
    /// Then deleted in this order.
    removed: &'static [&'static str],
    /// "ip:port/PROTO" → "namespace/name Kind" of its holder, or "-" for no frontend.
    owners: &'static [(&'static str, &'static str)],
    /// (namespace/name, field, part of the message), sorted by service and field.
    problems: &'static [(&'static str, &'static str, &'static str)],
}

const CASE: Case = Case {
    name: "",
    services: &[],
    removed: &[],
    owners: &[],
    problems: &[],
};

#[rustfmt::skip]
static CASES: &[Case] = &[
    Case {
        name: "externalIP equal to another Service's ClusterIP on 53/UDP: the owner keeps it",
        services: &[KUBE_DNS, ATTACKER],
        owners: &[
            ("10.96.0.10:53/UDP", "kube-system/kube-dns ClusterIP"),
            ("10.96.0.10:53/TCP", "kube-system/kube-dns ClusterIP"),
            ("10.96.9.9:53/UDP", "aa/attacker ClusterIP"),
        ],
        problems: &[(
            "aa/attacker",
            "spec.externalIPs[0]",
            "10.96.0.10 is the ClusterIP of kube-system/kube-dns: refused (CVE-2020-8554)",
        )],
        ..CASE
    },
    Case {
        name: "externalIP equal to another Service's ClusterIP, the attacker added first",
        services: &[ATTACKER, KUBE_DNS],
        owners: &[("10.96.0.10:53/UDP", "kube-system/kube-dns ClusterIP")],
        problems: &[("aa/attacker", "spec.externalIPs[0]", "ClusterIP of kube-system/kube-dns")],
        ..CASE
    },
    Case {
        name: "externalIP equal to another Service's ClusterIP is refused on every port",
        services: &[KUBE_DNS, Svc { ports: &[(8053, "UDP", 0)], ..ATTACKER }],
        owners: &[("10.96.0.10:8053/UDP", "-"), ("10.96.9.9:8053/UDP", "aa/attacker ClusterIP")],
        problems: &[("aa/attacker", "spec.externalIPs[0]", "ClusterIP of kube-system/kube-dns")],
        ..CASE
    },
    Case {
        name: "LoadBalancer IP equal to another Service's ClusterIP",
        services: &[KUBE_DNS, Svc { external_ips: &[], lb_ips: &["10.96.0.10"], ..ATTACKER }],
        owners: &[("10.96.0.10:53/UDP", "kube-system/kube-dns ClusterIP")],
        problems: &[(
            "aa/attacker",
            "status.loadBalancer.ingress[0].ip",
            "ClusterIP of kube-system/kube-dns",
        )],
        ..CASE
    },
    Case {
        name: "externalIP equal to the ClusterIP of a Service another proxy serves",
        services: &[Svc { other_proxy: true, ..KUBE_DNS }, ATTACKER],
        owners: &[("10.96.0.10:53/UDP", "-")],
        problems: &[("aa/attacker", "spec.externalIPs[0]", "ClusterIP of kube-system/kube-dns")],
        ..CASE
    },
    Case {
        name: "the ClusterIP's Service deleted: the externalIP is served",
        services: &[KUBE_DNS, ATTACKER],
        removed: &["kube-system/kube-dns"],
        owners: &[("10.96.0.10:53/UDP", "aa/attacker ExternalIP"), ("10.96.0.10:53/TCP", "-")],
        ..CASE
    },
    Case {
        name: "externalIP equal to the Service's own ClusterIP: served, as its ClusterIP",
        services: &[Svc { external_ips: &["10.96.0.10"], ..KUBE_DNS }],
        owners: &[("10.96.0.10:53/UDP", "kube-system/kube-dns ClusterIP")],
        ..CASE
    },
    Case {
        name: "externalIP equal to a node address: refused, the NodePort stays",
        services: &[
            WEB,
            Svc { external_ips: &["192.0.2.10"], ports: &[(30080, "TCP", 0), (22, "TCP", 0)], ..ATTACKER },
        ],
        owners: &[
            ("192.0.2.10:30080/TCP", "default/web NodePort"),
            ("192.0.2.10:22/TCP", "-"),
            ("10.96.9.9:22/TCP", "aa/attacker ClusterIP"),
        ],
        problems: &[(
            "aa/attacker",
            "spec.externalIPs[0]",
            "192.0.2.10 is an address of this node: refused (CVE-2020-8554)",
        )],
        ..CASE
    },
    Case {
        name: "LoadBalancer IP equal to a node address: refused",
        services: &[
            Svc { external_ips: &[], lb_ips: &["192.0.2.10"], ports: &[(30080, "TCP", 31000)], ..ATTACKER },
            WEB,
        ],
        owners: &[
            ("192.0.2.10:30080/TCP", "default/web NodePort"),
            ("192.0.2.10:31000/TCP", "aa/attacker NodePort"),
        ],
        problems: &[(
            "aa/attacker",
            "status.loadBalancer.ingress[0].ip",
            "an address of this node",
        )],
        ..CASE
    },
    Case {
        name: "two Services on one externalIP:port: the older wins whatever the names",
        services: &[OLDER, NEWER],
        owners: &[
            ("198.51.100.7:80/TCP", "zz/older ExternalIP"),
            ("10.96.2.2:80/TCP", "aa/newer ClusterIP"),
        ],
        problems: &[(
            "aa/newer",
            "spec",
            "198.51.100.7:80/TCP is also a frontend of zz/older, older or as old and first by name: \
             not served",
        )],
        ..CASE
    },
    Case {
        name: "two Services on one externalIP:port, the newer added first: the older still wins",
        services: &[NEWER, OLDER],
        owners: &[("198.51.100.7:80/TCP", "zz/older ExternalIP")],
        problems: &[("aa/newer", "spec", "also a frontend of zz/older")],
        ..CASE
    },
    Case {
        name: "two Services on one externalIP:port, the older deleted: the newer takes over",
        services: &[OLDER, NEWER],
        removed: &["zz/older"],
        owners: &[("198.51.100.7:80/TCP", "aa/newer ExternalIP")],
        ..CASE
    },
    Case {
        name: "the newer added first, the older added and deleted: the newer has it back",
        services: &[NEWER, OLDER],
        removed: &["zz/older"],
        owners: &[("198.51.100.7:80/TCP", "aa/newer ExternalIP")],
        ..CASE
    },
    Case {
        name: "two Services on one externalIP:port, the newer deleted: the older keeps it",
        services: &[OLDER, NEWER],
        removed: &["aa/newer"],
        owners: &[("198.51.100.7:80/TCP", "zz/older ExternalIP")],
        ..CASE
    },
    Case {
        name: "no creationTimestamp counts as the newest",
        services: &[OLDER, Svc { created: "", ..NEWER }],
        owners: &[("198.51.100.7:80/TCP", "zz/older ExternalIP")],
        problems: &[("aa/newer", "spec", "also a frontend of zz/older")],
        ..CASE
    },
    Case {
        name: "as old as each other: the first name wins",
        services: &[OLDER, Svc { created: "2020-01-01T00:00:00Z", ..NEWER }],
        owners: &[("198.51.100.7:80/TCP", "aa/newer ExternalIP")],
        problems: &[("zz/older", "spec", "also a frontend of aa/newer")],
        ..CASE
    },
    Case {
        name: "neither has a creationTimestamp: the first name wins",
        services: &[Svc { created: "", ..OLDER }, Svc { created: "", ..NEWER }],
        owners: &[("198.51.100.7:80/TCP", "aa/newer ExternalIP")],
        problems: &[("zz/older", "spec", "also a frontend of aa/newer")],
        ..CASE
    },
    Case {
        name: "a LoadBalancer IP and an externalIP on one ip:port: the older wins",
        services: &[NEWER, Svc { external_ips: &[], lb_ips: &["198.51.100.7"], ..OLDER }],
        owners: &[("198.51.100.7:80/TCP", "zz/older LoadBalancer")],
        problems: &[("aa/newer", "spec", "also a frontend of zz/older")],
        ..CASE
    },
    Case {
        name: "two Services with one ClusterIP: the older wins",
        services: &[
            Svc { external_ips: &[], cluster_ip: "10.96.3.3", ..NEWER },
            Svc { external_ips: &[], cluster_ip: "10.96.3.3", ..OLDER },
        ],
        owners: &[("10.96.3.3:80/TCP", "zz/older ClusterIP")],
        problems: &[("aa/newer", "spec", "10.96.3.3:80/TCP is also a frontend of zz/older")],
        ..CASE
    },
    Case {
        name: "two Services with one ClusterIP, the older deleted: the newer takes over",
        services: &[
            Svc { external_ips: &[], cluster_ip: "10.96.3.3", ..OLDER },
            Svc { external_ips: &[], cluster_ip: "10.96.3.3", ..NEWER },
        ],
        removed: &["zz/older"],
        owners: &[("10.96.3.3:80/TCP", "aa/newer ClusterIP")],
        ..CASE
    },
    Case {
        name: "two Services with one NodePort: the older wins",
        services: &[Svc { name: "aa/web", created: "2022-01-01T00:00:00Z", cluster_ip: "10.96.1.2", ..WEB }, WEB],
        owners: &[("192.0.2.10:30080/TCP", "default/web NodePort")],
        problems: &[("aa/web", "spec", "192.0.2.10:30080/TCP is also a frontend of default/web")],
        ..CASE
    },
];

fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec![NODE_IP],
    }
}

fn object_ref(name: &str) -> ObjectRef {
    let (namespace, name) = name.split_once('/').expect("namespace/name");
    ObjectRef::new(namespace, name)
}

fn service(svc: &Svc) -> Arc<Service> {
    let key = object_ref(svc.name);
    let mut metadata = json!({"namespace": &*key.namespace, "name": &*key.name});
    if !svc.created.is_empty() {
        metadata["creationTimestamp"] = svc.created.into();
    }
    if svc.other_proxy {
        metadata["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
    }
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|&(port, protocol, node_port)| {
            let mut p = json!({"name": format!("p{port}"), "port": port, "protocol": protocol});
            if node_port != 0 {
                p["nodePort"] = node_port.into();
            }
            p
        })
        .collect();
    let kind = if !svc.lb_ips.is_empty() {
        "LoadBalancer"
    } else if svc.ports.iter().any(|p| p.2 != 0) {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let ingress: Vec<Value> = svc.lb_ips.iter().map(|ip| json!({"ip": ip})).collect();
    let service = json!({
        "metadata": metadata,
        "spec": {"type": kind, "clusterIP": svc.cluster_ip, "externalIPs": svc.external_ips, "ports": ports},
        "status": {"loadBalancer": {"ingress": ingress}},
    });
    Arc::new(serde_json::from_value(service).expect("a Service"))
}

/// "ip:port/PROTO" and a scope → its key.
fn frontend(described: &str, scope: Scope) -> FrontendKey {
    let (addr, proto) = described.split_once('/').expect("ip:port/PROTO");
    let (ip, port) = addr.split_once(':').expect("ip:port");
    FrontendKey {
        ip: ip.parse().expect("an IPv4 address"),
        port: port.parse().expect("a port"),
        proto: if proto == "UDP" {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        scope,
    }
}

fn check(case: &Case) -> Vec<String> {
    let (node, mut tracker, mut objects) = (node(), Tracker::default(), Objects::default());
    for svc in case.services {
        let previous = objects.clone();
        objects.services.insert(object_ref(svc.name), service(svc));
        tracker.update(&previous, &objects, &node);
    }
    for name in case.removed {
        let previous = objects.clone();
        objects.services.remove(&object_ref(name));
        tracker.update(&previous, &objects, &node);
    }
    let d = tracker.desired();
    let mut errs = Vec::new();
    if *d != desired(&objects, &node) {
        errs.push("the tracker's result differs from one computed from scratch".into());
    }
    for (described, want) in case.owners {
        for scope in [Scope::External, Scope::Internal] {
            let got = d
                .frontends
                .get(&frontend(described, scope))
                .map_or("-".into(), |fe| {
                    format!("{} {}", fe.set.service, fe.kind.as_str())
                });
            if got != *want {
                errs.push(format!("{described} {scope:?}: want {want}, got {got}"));
            }
        }
    }
    let got: Vec<(&str, &str)> = d
        .problems
        .iter()
        .map(|p| (p.object.as_str(), p.field.as_str()))
        .collect();
    let objects: Vec<String> = case
        .problems
        .iter()
        .map(|p| format!("Service {}", p.0))
        .collect();
    let want: Vec<(&str, &str)> = objects
        .iter()
        .zip(case.problems)
        .map(|(object, p)| (object.as_str(), p.1))
        .collect();
    if got != want {
        errs.push(format!("problems: want {want:?}, got {:?}", d.problems));
    }
    for (p, (_, _, fragment)) in d.problems.iter().zip(case.problems) {
        if !p.message.contains(fragment) {
            errs.push(format!("problem {p}: want {fragment:?} in it"));
        }
    }
    errs
}

#[test]
fn frontend_ownership_cannot_be_hijacked() {
    let failures = super::table_failures(CASES, |c| c.name, check);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn case_names_are_unique() {
    super::assert_unique_names(CASES.iter().map(|c| c.name));
}
