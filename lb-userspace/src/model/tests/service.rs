//! How a Service's fields survive validation, through `desired()`: a bad field skips the smallest
//! unit kube-proxy would skip (one port, one address), a setting without a smaller unit falls back
//! to what kube-proxy makes of its value, and each is reported on the Service; only a Service
//! without a spec, or an IPv6-only one, is left out whole (by the IPv4 model: the IPv6 model serves
//! it). Every case runs through both families' models, as kube-proxy's two proxiers would see it.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{json, Value};

use crate::model::{
    desired, set_range, Desired, Family, NodeContext, ObjectRef, Objects, Scope, MAX_PORT_NAME,
};

/// A port name of 63 characters, the longest a DNS label may be.
macro_rules! name_63 {
    () => {
        "prometheus-metrics-http-and-a-few-more-words-to-reach-sixty-thr"
    };
}

struct Case {
    name: &'static str,
    /// Service ns/svc without its metadata: `spec`, and `status` if any.
    service: fn() -> Value,
    /// Frontends from outside the node: "ip:port/PROTO Kind port-name".
    frontends: &'static [&'static str],
    /// Backend sets: "port-name/PROTO Policy", then " affinity=N", " ext_local", " int_local"
    /// where set.
    sets: &'static [&'static str],
    health_checks: &'static [u16],
    /// Problems on the Service: (field, part of the message).
    problems: &'static [(&'static str, &'static str)],
    /// The same four from the IPv6 model (node address 2001:db8::10): empty for an IPv4-only
    /// Service.
    frontends6: &'static [&'static str],
    sets6: &'static [&'static str],
    health_checks6: &'static [u16],
    problems6: &'static [(&'static str, &'static str)],
}

const CASE: Case = Case {
    name: "",
    service: || json!({}),
    frontends: &[],
    sets: &[],
    health_checks: &[],
    problems: &[],
    frontends6: &[],
    sets6: &[],
    health_checks6: &[],
    problems6: &[],
};

#[rustfmt::skip]
static CASES: &[Case] = &[
    Case {
        name: "a 63-character port name is served, ClusterIP and NodePort",
        service: || json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [
            {"name": name_63!(), "port": 80, "nodePort": 30080},
        ]}}),
        frontends: &[
            concat!("10.96.0.1:80/TCP ClusterIP ", name_63!()),
            concat!("192.0.2.10:30080/TCP NodePort ", name_63!()),
        ],
        sets: &[concat!(name_63!(), "/TCP Cluster")],
        ..CASE
    },
    Case {
        name: "a 64-character port name skips that port only",
        service: || json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
            {"name": concat!(name_63!(), "x"), "port": 80},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]}}),
        frontends: &["10.96.0.1:53/UDP ClusterIP dns"],
        sets: &["dns/UDP Cluster"],
        problems: &[("spec.ports[0].name", "longer than 63 characters: port skipped")],
        ..CASE
    },
    Case {
        name: "port names that are not DNS labels skip their ports only",
        service: || json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
            {"name": "Http", "port": 80},
            {"name": "-web", "port": 81},
            {"name": "web-", "port": 82},
            {"name": "web_ui", "port": 83},
            {"name": "web-2", "port": 84},
        ]}}),
        frontends: &["10.96.0.1:84/TCP ClusterIP web-2"],
        sets: &["web-2/TCP Cluster"],
        problems: &[
            ("spec.ports[0].name", "\"Http\" is not a DNS label"),
            ("spec.ports[1].name", "\"-web\" is not a DNS label"),
            ("spec.ports[2].name", "\"web-\" is not a DNS label"),
            ("spec.ports[3].name", "\"web_ui\" is not a DNS label"),
        ],
        ..CASE
    },
    Case {
        name: "bad port numbers skip their ports only",
        service: || json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
            {"name": "zero", "port": 0},
            {"name": "big", "port": 70000},
            {"name": "ok", "port": 80},
        ]}}),
        frontends: &["10.96.0.1:80/TCP ClusterIP ok"],
        sets: &["ok/TCP Cluster"],
        problems: &[
            ("spec.ports[0].port", "0 is not within 1..=65535: port skipped"),
            ("spec.ports[1].port", "70000 is not within 1..=65535: port skipped"),
        ],
        ..CASE
    },
    Case {
        name: "a bad nodePort skips that port only",
        service: || json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [
            {"name": "a", "port": 80, "nodePort": 70000},
            {"name": "b", "port": 81, "nodePort": 30081},
        ]}}),
        frontends: &["10.96.0.1:81/TCP ClusterIP b", "192.0.2.10:30081/TCP NodePort b"],
        sets: &["b/TCP Cluster"],
        problems: &[("spec.ports[0].nodePort", "70000 is not within 1..=65535")],
        ..CASE
    },
    Case {
        name: "an unknown protocol skips that port only; SCTP is left out quietly",
        service: || json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
            {"name": "quic", "port": 80, "protocol": "QUIC"},
            {"name": "sctp", "port": 81, "protocol": "SCTP"},
            {"name": "tcp", "port": 82},
        ]}}),
        frontends: &["10.96.0.1:82/TCP ClusterIP tcp"],
        sets: &["tcp/TCP Cluster"],
        problems: &[("spec.ports[0].protocol", "unknown protocol \"QUIC\": port skipped")],
        ..CASE
    },
    Case {
        name: "every bad field of a port is reported",
        service: || json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
            {"name": "Bad", "port": 0, "protocol": "QUIC"},
            {"name": "ok", "port": 80},
        ]}}),
        frontends: &["10.96.0.1:80/TCP ClusterIP ok"],
        sets: &["ok/TCP Cluster"],
        problems: &[
            ("spec.ports[0].name", "not a DNS label"),
            ("spec.ports[0].port", "not within"),
            ("spec.ports[0].protocol", "unknown protocol"),
        ],
        ..CASE
    },
    Case {
        name: "the same name and protocol twice: the first port stays",
        service: || json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
            {"name": "http", "port": 80},
            {"name": "http", "port": 8080},
        ]}}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http"],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.ports[1].name", "same name and protocol as spec.ports[0]")],
        ..CASE
    },
    Case {
        name: "one name on two protocols is two ports (kube-proxy's port names include it)",
        service: || json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns", "port": 53, "protocol": "TCP"},
        ]}}),
        frontends: &["10.96.0.1:53/TCP ClusterIP dns", "10.96.0.1:53/UDP ClusterIP dns"],
        sets: &["dns/TCP Cluster", "dns/UDP Cluster"],
        ..CASE
    },
    Case {
        name: "the same port and protocol twice: the first port stays",
        service: || json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
            {"name": "a", "port": 80},
            {"name": "b", "port": 80},
        ]}}),
        frontends: &["10.96.0.1:80/TCP ClusterIP a"],
        sets: &["a/TCP Cluster"],
        problems: &[("spec.ports[1]", "same port and protocol as spec.ports[0]")],
        ..CASE
    },
    Case {
        name: "the same nodePort twice: the first port stays",
        service: || json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [
            {"name": "a", "port": 80, "nodePort": 30080},
            {"name": "b", "port": 81, "nodePort": 30080},
        ]}}),
        frontends: &["10.96.0.1:80/TCP ClusterIP a", "192.0.2.10:30080/TCP NodePort a"],
        sets: &["a/TCP Cluster"],
        problems: &[("spec.ports[1].nodePort", "same nodePort and protocol as spec.ports[0]")],
        ..CASE
    },
    Case {
        name: "a bad externalIP skips that address only",
        service: || json!({"spec": {
            "clusterIP": "10.96.0.1",
            "externalIPs": ["198.51.100.1", "198.51.100.x", "198.51.100.3"],
            "ports": [{"name": "http", "port": 80}],
        }}),
        frontends: &[
            "10.96.0.1:80/TCP ClusterIP http",
            "198.51.100.1:80/TCP ExternalIP http",
            "198.51.100.3:80/TCP ExternalIP http",
        ],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.externalIPs[1]", "\"198.51.100.x\" is not an IP address: skipped")],
        ..CASE
    },
    Case {
        name: "a bad clusterIPs entry skips that address only",
        service: || json!({"spec": {
            "clusterIP": "10.96.0.1",
            "clusterIPs": ["10.96.0.1", "10.96.0.300"],
            "ports": [{"name": "http", "port": 80}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http"],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.clusterIPs[1]", "\"10.96.0.300\" is not an IP address")],
        ..CASE
    },
    Case {
        name: "a bad load balancer IP skips that address only (a hostname, quietly)",
        service: || json!({
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1", "ports": [
                {"name": "http", "port": 80, "nodePort": 30080},
            ]},
            "status": {"loadBalancer": {"ingress": [
                {"ip": "203.0.113.x"},
                {"hostname": "lb.example.com"},
                {"ip": "203.0.113.7"},
            ]}},
        }),
        frontends: &[
            "10.96.0.1:80/TCP ClusterIP http",
            "192.0.2.10:30080/TCP NodePort http",
            "203.0.113.7:80/TCP LoadBalancer http",
        ],
        sets: &["http/TCP Cluster"],
        problems: &[("status.loadBalancer.ingress[0].ip", "is not an IP address")],
        ..CASE
    },
    Case {
        name: "an unknown externalTrafficPolicy is Cluster",
        service: || json!({"spec": {
            "type": "NodePort",
            "clusterIP": "10.96.0.1",
            "externalTrafficPolicy": "local",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http", "192.0.2.10:30080/TCP NodePort http"],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.externalTrafficPolicy", "unknown policy \"local\": Cluster")],
        ..CASE
    },
    Case {
        name: "an unknown internalTrafficPolicy is Cluster",
        service: || json!({"spec": {
            "clusterIP": "10.96.0.1",
            "internalTrafficPolicy": "Node",
            "ports": [{"name": "http", "port": 80}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http"],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.internalTrafficPolicy", "unknown policy \"Node\": Cluster")],
        ..CASE
    },
    Case {
        name: "an unknown sessionAffinity is none",
        service: || json!({"spec": {
            "clusterIP": "10.96.0.1",
            "sessionAffinity": "Cookie",
            "ports": [{"name": "http", "port": 80}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http"],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.sessionAffinity", "unknown session affinity \"Cookie\": none")],
        ..CASE
    },
    Case {
        name: "an affinity timeout out of range leaves affinity off",
        service: || json!({"spec": {
            "clusterIP": "10.96.0.1",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}},
            "ports": [{"name": "http", "port": 80}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http"],
        sets: &["http/TCP Cluster"],
        problems: &[(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "86401 is not within 1..=86400: no session affinity",
        )],
        ..CASE
    },
    Case {
        name: "valid affinity and policies are kept",
        service: || json!({"spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.1",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http", "192.0.2.10:30080/TCP NodePort http"],
        sets: &["http/TCP Cluster affinity=60", "http/TCP Local affinity=60 ext_local"],
        health_checks: &[32000],
        ..CASE
    },
    Case {
        name: "an unknown type is served as kube-proxy does: eTP Cluster, no health check",
        service: || json!({"spec": {
            "type": "Balanced",
            "clusterIP": "10.96.0.1",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http", "192.0.2.10:30080/TCP NodePort http"],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.type", "unknown type \"Balanced\"")],
        ..CASE
    },
    Case {
        name: "a bad healthCheckNodePort: served without the health check",
        service: || json!({"spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.1",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 70000,
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http", "192.0.2.10:30080/TCP NodePort http"],
        sets: &["http/TCP Cluster", "http/TCP Local ext_local"],
        problems: &[("spec.healthCheckNodePort", "70000 is not within 1..=65535")],
        ..CASE
    },
    Case {
        name: "no spec: the Service is left out",
        service: || json!({}),
        problems: &[("spec", "missing")],
        problems6: &[("spec", "missing")],
        ..CASE
    },
    Case {
        name: "IPv6-only: the IPv4 model leaves it out, the IPv6 model serves it",
        service: || json!({"spec": {
            "type": "LoadBalancer",
            "ipFamilies": ["IPv6"],
            "clusterIP": "fd00::10",
            "clusterIPs": ["fd00::10"],
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
            "externalIPs": ["198.51.100.1"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        problems: &[("spec.ipFamilies", crate::model::IPV6_SOCKETS_ONLY)],
        frontends6: &["[2001:db8::10]:30080/TCP NodePort http", "[fd00::10]:80/TCP ClusterIP http"],
        sets6: &["http/TCP Cluster", "http/TCP Local ext_local"],
        health_checks6: &[32000],
        ..CASE
    },
    Case {
        name: "IPv6-only by its clusterIPs alone",
        service: || json!({"spec": {
            "type": "NodePort",
            "clusterIPs": ["fd00::10"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        problems: &[("spec.ipFamilies", "IPv6-only Service")],
        frontends6: &["[2001:db8::10]:30080/TCP NodePort http", "[fd00::10]:80/TCP ClusterIP http"],
        sets6: &["http/TCP Cluster"],
        ..CASE
    },
    Case {
        name: "IPv6 first family, no IPv4 cluster IP (PreferDualStack on an IPv6 cluster)",
        service: || json!({"spec": {
            "type": "NodePort",
            "ipFamilies": ["IPv6", "IPv4"],
            "ipFamilyPolicy": "PreferDualStack",
            "clusterIP": "fd00::10",
            "clusterIPs": ["fd00::10"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        problems: &[("spec.ipFamilies", "IPv6-only Service")],
        frontends6: &["[2001:db8::10]:30080/TCP NodePort http", "[fd00::10]:80/TCP ClusterIP http"],
        sets6: &["http/TCP Cluster"],
        ..CASE
    },
    Case {
        name: "IPv6 family, cluster IP not allocated yet: NodePorts on IPv6 node addresses only",
        service: || json!({"spec": {
            "type": "NodePort",
            "ipFamilies": ["IPv6"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        problems: &[("spec.ipFamilies", "IPv6-only Service")],
        frontends6: &["[2001:db8::10]:30080/TCP NodePort http"],
        sets6: &["http/TCP Cluster"],
        ..CASE
    },
    Case {
        name: "dual-stack, IPv6 first: each family its ClusterIP, NodePort and externalIPs",
        service: || json!({"spec": {
            "type": "LoadBalancer",
            "ipFamilies": ["IPv6", "IPv4"],
            "ipFamilyPolicy": "RequireDualStack",
            "clusterIP": "fd00::10",
            "clusterIPs": ["fd00::10", "10.96.0.1"],
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32000,
            "externalIPs": ["fd00::99", "198.51.100.1"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }}),
        frontends: &[
            "10.96.0.1:80/TCP ClusterIP http",
            "192.0.2.10:30080/TCP NodePort http",
            "198.51.100.1:80/TCP ExternalIP http",
        ],
        sets: &["http/TCP Cluster", "http/TCP Local ext_local"],
        health_checks: &[32000],
        frontends6: &[
            "[2001:db8::10]:30080/TCP NodePort http",
            "[fd00::10]:80/TCP ClusterIP http",
            "[fd00::99]:80/TCP ExternalIP http",
        ],
        sets6: &["http/TCP Cluster", "http/TCP Local ext_local"],
        health_checks6: &[32000],
        ..CASE
    },
    Case {
        name: "dual-stack, IPv4 first: LoadBalancer ingress IPs split by family",
        service: || json!({
            "spec": {
                "type": "LoadBalancer",
                "ipFamilies": ["IPv4", "IPv6"],
                "clusterIPs": ["10.96.0.1", "fd00::10"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "2001:db8:2::1"}, {"ip": "203.0.113.1"},
            ]}},
        }),
        frontends: &[
            "10.96.0.1:80/TCP ClusterIP http",
            "192.0.2.10:30080/TCP NodePort http",
            "203.0.113.1:80/TCP LoadBalancer http",
        ],
        sets: &["http/TCP Cluster"],
        frontends6: &[
            "[2001:db8::10]:30080/TCP NodePort http",
            "[2001:db8:2::1]:80/TCP LoadBalancer http",
            "[fd00::10]:80/TCP ClusterIP http",
        ],
        sets6: &["http/TCP Cluster"],
        ..CASE
    },
    Case {
        name: "a clusterIPs entry of another family than its spec.ipFamilies entry is skipped",
        service: || json!({"spec": {
            "ipFamilies": ["IPv4", "IPv6"],
            "clusterIPs": ["10.96.0.1", "10.96.0.2"],
            "ports": [{"name": "http", "port": 80}],
        }}),
        frontends: &["10.96.0.1:80/TCP ClusterIP http"],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.clusterIPs[1]", "10.96.0.2 is IPv4, not IPv6 as spec.ipFamilies[1] says: skipped")],
        ..CASE
    },
    Case {
        name: "loadBalancerSourceRanges filter only the LoadBalancer IP, of their own family",
        service: || json!({
            "spec": {
                "type": "LoadBalancer",
                "ipFamilies": ["IPv4", "IPv6"],
                "clusterIPs": ["10.96.0.1", "fd00::10"],
                "externalIPs": ["198.51.100.9"],
                "loadBalancerSourceRanges": ["198.51.100.0/24", " 203.0.113.7/32 "],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "203.0.113.1"}, {"ip": "2001:db8:2::1"},
            ]}},
        }),
        frontends: &[
            "10.96.0.1:80/TCP ClusterIP http",
            "192.0.2.10:30080/TCP NodePort http",
            "198.51.100.9:80/TCP ExternalIP http",
            "203.0.113.1:80/TCP LoadBalancer http ranges=198.51.100.0/24,203.0.113.7/32",
        ],
        sets: &["http/TCP Cluster"],
        // No IPv6 range: kube-proxy's IPv6 proxier leaves its LoadBalancer IP open.
        frontends6: &[
            "[2001:db8::10]:30080/TCP NodePort http",
            "[2001:db8:2::1]:80/TCP LoadBalancer http",
            "[fd00::10]:80/TCP ClusterIP http",
        ],
        sets6: &["http/TCP Cluster"],
        ..CASE
    },
    Case {
        name: "a loadBalancerSourceRanges entry that is no CIDR is skipped, the rest apply",
        service: || json!({
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.1",
                "loadBalancerSourceRanges": ["10.0.0.0/33", "198.51.100.7/24"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}},
        }),
        frontends: &[
            "10.96.0.1:80/TCP ClusterIP http",
            "192.0.2.10:30080/TCP NodePort http",
            "203.0.113.1:80/TCP LoadBalancer http ranges=198.51.100.0/24",
        ],
        sets: &["http/TCP Cluster"],
        problems: &[("spec.loadBalancerSourceRanges[0]", "\"10.0.0.0/33\" is not a CIDR: skipped")],
        ..CASE
    },
    Case {
        name: "loadBalancerSourceRanges without one valid entry keep the LoadBalancer IPs out",
        service: || json!({
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.1",
                "loadBalancerSourceRanges": ["everyone"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}},
        }),
        frontends: &["10.96.0.1:80/TCP ClusterIP http", "192.0.2.10:30080/TCP NodePort http"],
        sets: &["http/TCP Cluster"],
        problems: &[
            ("spec.loadBalancerSourceRanges", "no valid range: the LoadBalancer IPs are not served"),
            ("spec.loadBalancerSourceRanges[0]", "is not a CIDR"),
        ],
        ..CASE
    },
];

fn node() -> NodeContext {
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec![Ipv4Addr::new(192, 0, 2, 10)],
    }
}

fn node6() -> NodeContext<Ipv6Addr> {
    NodeContext {
        name: "node-a".into(),
        nodeport_addrs: vec!["2001:db8::10".parse().unwrap()],
    }
}

fn objects(service: Value, slices: &[Value]) -> Objects {
    let mut service = service;
    service["metadata"] = json!({"namespace": "ns", "name": "svc"});
    let service: Service = serde_json::from_value(service).expect("a Service");
    let mut objects = Objects::default();
    objects
        .services
        .insert(ObjectRef::new("ns", "svc"), Arc::new(service));
    for (i, slice) in slices.iter().enumerate() {
        let slice: EndpointSlice = serde_json::from_value(slice.clone()).expect("a slice");
        let name = ObjectRef::new("ns", &format!("svc-{i}"));
        objects.slices.insert(name, Arc::new(slice));
    }
    objects
}

fn frontends<A: Family>(d: &Desired<A>) -> Vec<String> {
    let outside = d
        .frontends
        .iter()
        .filter(|(k, _)| k.scope == Scope::External);
    let described = outside.map(|(k, fe)| {
        let (addr, proto) = (SocketAddr::new(k.ip.into(), k.port), k.proto.as_str());
        let name = &fe.set.port_name;
        let mut out = format!("{addr}/{proto} {} {name}", fe.kind.as_str());
        if let Some(ranges) = &fe.source_ranges {
            let ranges: Vec<String> = ranges
                .iter()
                .map(|(ip, len)| format!("{ip}/{len}"))
                .collect();
            out += &format!(" ranges={}", ranges.join(","));
        }
        out
    });
    described.map(|s| s.trim_end().to_string()).collect()
}

fn sets<A>(d: &Desired<A>) -> Vec<String> {
    let described = d.sets.iter().map(|(k, set)| {
        let mut out = format!("{}/{} {:?}", k.port_name, k.proto.as_str(), k.policy);
        if let Some(t) = set.affinity_timeout {
            out += &format!(" affinity={t}");
        }
        for (flag, name) in [
            (set.external_local, " ext_local"),
            (set.internal_local, " int_local"),
        ] {
            if flag {
                out += name;
            }
        }
        out
    });
    described.collect()
}

fn strings<T: ToString>(list: impl IntoIterator<Item = T>) -> Vec<String> {
    list.into_iter().map(|s| s.to_string()).collect()
}

fn check(case: &Case) -> Vec<String> {
    let objects = objects((case.service)(), &[]);
    let mut errs = compare(
        "",
        &desired(&objects, &node()),
        (case.frontends, case.sets, case.health_checks, case.problems),
    );
    errs.extend(compare(
        "IPv6 ",
        &desired(&objects, &node6()),
        (
            case.frontends6,
            case.sets6,
            case.health_checks6,
            case.problems6,
        ),
    ));
    errs
}

type Expected = (
    &'static [&'static str],
    &'static [&'static str],
    &'static [u16],
    &'static [(&'static str, &'static str)],
);

/// One family's model against its expected frontends, sets, health checks and problems.
fn compare<A: Family>(family: &str, d: &Desired<A>, want: Expected) -> Vec<String> {
    let (want_frontends, want_sets, want_health_checks, want_problems) = want;
    let fields = d.problems.iter().map(|p| &p.field);
    let comparisons = [
        ("frontends", strings(want_frontends), frontends(d)),
        ("sets", strings(want_sets), sets(d)),
        (
            "health checks",
            strings(want_health_checks),
            strings(d.health_checks.keys()),
        ),
        (
            "problems",
            strings(want_problems.iter().map(|p| p.0)),
            strings(fields),
        ),
    ];
    let mut errs: Vec<String> = comparisons
        .into_iter()
        .filter(|(_, want, got)| want != got)
        .map(|(what, want, got)| format!("{family}{what}: want {want:#?}, got {got:#?}"))
        .collect();
    for (p, (_, fragment)) in d.problems.iter().zip(want_problems) {
        if p.object != "Service ns/svc" || !p.message.contains(fragment) {
            errs.push(format!(
                "{family}problem {p}: want it on the Service, with {fragment:?}"
            ));
        }
    }
    errs
}

#[test]
fn a_bad_field_skips_the_smallest_unit() {
    let failures = super::table_failures(CASES, |c| c.name, check);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn case_names_are_unique() {
    super::assert_unique_names(CASES.iter().map(|c| c.name));
}

/// The 63-character name, from the Service and the EndpointSlice to the backend set's key that
/// the reconciler finds with `set_range`, intact.
#[test]
fn a_63_character_port_name_is_served_end_to_end() {
    let name = name_63!();
    assert_eq!(name.len(), MAX_PORT_NAME);
    let service = json!({"spec": {"clusterIP": "10.96.0.1", "ports": [
        {"name": name, "port": 80, "targetPort": 9090},
    ]}});
    let slice = json!({
        "metadata": {"namespace": "ns", "name": "svc-0", "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": "IPv4",
        "ports": [{"name": name, "port": 9090, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-a"}],
    });
    let d = desired(&objects(service, &[slice]), &node());
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    let service = ObjectRef::new("ns", "svc");
    let sets: Vec<_> = d.sets.range(set_range(&service)).collect();
    let [(key, set)] = sets[..] else {
        panic!("one set, got {sets:?}");
    };
    assert_eq!(key.port_name, name);
    let backends: Vec<_> = set.backends.iter().map(|b| (b.ip, b.port)).collect();
    assert_eq!(backends, [(Ipv4Addr::new(10, 244, 1, 5), 9090)]);
    assert_eq!(d.frontends.len(), 2, "{:?}", d.frontends);
    assert!(d.frontends.values().all(|fe| fe.set == *key));
}
