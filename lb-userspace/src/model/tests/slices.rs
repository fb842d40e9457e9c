//! kube-proxy's EndpointSlice tests, case by case: how slices merge into per-service-port endpoint
//! lists (pkg/proxy/endpointslicecache_test.go, and the EndpointSlice cases of
//! pkg/proxy/endpoints_test.go), ported from the newest revisions in the reference store
//! (kubernetes/kubernetes 05e14799 for endpointslicecache_test.go; endpoints_test.go at the
//! revision that tests EndpointSlices with ptr.To and sets.Set).
//!
//! lb merges a service's slices afresh whenever one of them changes (its tracker, model/tracker.rs,
//! works per service, not per endpoint). So a Go case that feeds slice events into kube-proxy's
//! cache becomes: the slices the cache held before (`before`), the events (`change`: add/update
//! by name, or delete), then the merged endpoints of every service, from `endpoints::merge` over
//! each service's slices, compared with the endpoints map upstream expects for the end state. Upstream's map lists endpoints in a fixed order; here each port's endpoints
//! compare as a sorted list of "ip:port" plus the flags that are true (local, ready, serving,
//! terminating), so order is not part of the contract but duplicates are. A port with no
//! endpoints is absent, as in upstream's map.
//!
//! Where upstream counts local ready endpoints (EndpointsMap.LocalReadyEndpoints and
//! getLocalReadyEndpointIPs: unique IPs per service), lb's counterpart is the health check of a
//! LoadBalancer service with externalTrafficPolicy Local; `local_ready` checks it through
//! `desired()`, with such a service made up for every service the case expects endpoints for.
//!
//! Not ported:
//! - TestEsDataChanged (7 cases), TestLastChangeTriggerTime (8 cases), and the
//!   previousEndpointsMap / expectedChangedEndpoints / expectedConntrackCleanupRequired /
//!   expectedReturnVal parts of TestUpdateEndpointsMap and TestEndpointSliceUpdate: they test the
//!   change tracker's bookkeeping (changed endpoints, trigger times, whether conntrack needs
//!   flushing), which lb's per-service tracker does not keep (its own tests and the reconcile
//!   scripts in testdata/reconcile/ cover what it hands the dataplane).
//!   The end state of every one of those cases is ported; a case whose change is a no-op upstream
//!   ("add the same slice", "remove a slice that doesn't even exist") asserts the end state equals
//!   the start state.
//! - TestEndpointsToEndpointsMap and the IPv6-mode cases: they test v1 Endpoints (which kube-proxy
//!   no longer reads) or an IPv6 proxier; lb's IPv6 model has dual-stack cases of its own
//!   (model/tests and testdata/model/dual-stack), its datapath is IPv4 only so far.
//! - "3 slices with different services and namespaces" checks only ns1/svc1 upstream; here the
//!   other two services are checked too, as `merged` returns them all.
//!
//! Deduplication: these tables expect kube-proxy's rule up to 1.35 (on the same ip:port in two
//! slices the first copy stays unless a later one is local; see "add a slice that overlaps with
//! existing state and partial ports"). kubernetes/kubernetes#135593 (Dec 2025) replaced it with
//! "a later copy replaces an earlier one unless it is terminating", dropping the local preference.
use std::{collections::BTreeMap, net::SocketAddrV4, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{json, Value};

use crate::model::{
    desired,
    endpoints::{group_of, merge},
    Endpoint, NodeContext, ObjectRef, Objects, Policy, Protocol, LABEL_HEADLESS, LABEL_PROXY_NAME,
    LABEL_SERVICE_NAME,
};

use Protocol::{Tcp as TCP, Udp as UDP};

/// endpoints_test.go's testHostname.
const HOST: &str = "test-hostname";

/// ("namespace/service", port name, protocol, endpoints as "ip:port flag...").
type PortEndpoints = (
    &'static str,
    &'static str,
    Protocol,
    &'static [&'static str],
);

// A test table's handful of events: boxing the slice would only add noise.
#[allow(clippy::large_enum_variant)]
enum Event {
    /// Add, or replace the slice of the same namespace/name.
    Apply(EndpointSlice),
    /// Delete namespace/name.
    Delete(&'static str, &'static str),
}

enum Want {
    /// Every service port's endpoints after the change.
    Endpoints(&'static [PortEndpoints]),
    /// The change is a no-op: endpoints after equal endpoints before.
    Unchanged,
}

struct Case {
    /// The upstream test function ("lb" for cases of ours).
    test: &'static str,
    name: &'static str,
    /// This node's name (kube-proxy's hostname / nodeName).
    node: &'static str,
    before: fn() -> Vec<EndpointSlice>,
    change: fn() -> Vec<Event>,
    want: Want,
    /// Local ready endpoint IPs per "namespace/service" (absent: 0); None: not checked.
    local_ready: Option<&'static [(&'static str, usize)]>,
    /// Problems the merge reports.
    problems: usize,
}

const CASE: Case = Case {
    test: "",
    name: "",
    node: "",
    before: Vec::new,
    change: Vec::new,
    want: Want::Endpoints(&[]),
    local_ready: None,
    problems: 0,
};

// TestGetLocalEndpointIPs starts from an endpoints map; the slices are made from the same table
// (one slice per service port), so the map is also the expected merge.
#[rustfmt::skip]
const LOCAL_IPS_1: &[PortEndpoints] = &[("ns1/ep1", "", TCP, &["1.1.1.1:11 ready serving"])];
#[rustfmt::skip]
const LOCAL_IPS_2: &[PortEndpoints] = &[("ns1/ep1", "", TCP, &["1.1.1.1:11 local ready serving"])];
#[rustfmt::skip]
const LOCAL_IPS_3: &[PortEndpoints] = &[
    ("ns1/ep1", "p11", TCP, &["1.1.1.1:11 ready serving", "1.1.1.2:11 local ready serving"]),
    ("ns1/ep1", "p12", TCP, &["1.1.1.1:12 ready serving", "1.1.1.2:12 local ready serving"]),
];
#[rustfmt::skip]
const LOCAL_IPS_4: &[PortEndpoints] = &[
    ("ns1/ep1", "p11", TCP, &["1.1.1.1:11 ready serving"]),
    ("ns2/ep2", "p22", TCP, &["2.2.2.2:22 local ready serving", "2.2.2.22:22 local ready serving"]),
    ("ns2/ep2", "p23", TCP, &["2.2.2.3:23 local ready serving"]),
    ("ns4/ep4", "p44", TCP, &["4.4.4.4:44 local ready serving", "4.4.4.5:44 ready serving"]),
    ("ns4/ep4", "p45", TCP, &["4.4.4.6:45 local ready serving"]),
];
#[rustfmt::skip]
const LOCAL_IPS_5: &[PortEndpoints] = &[
    ("ns1/ep1", "p11", TCP, &["1.1.1.1:11 ready serving"]),
    ("ns2/ep2", "p22", TCP, &["2.2.2.2:22 local ready serving", "2.2.2.22:22 local ready serving"]),
    ("ns2/ep2", "p23", TCP, &["2.2.2.3:23 local serving terminating"]),
    ("ns4/ep4", "p44", TCP, &["4.4.4.4:44 local ready serving", "4.4.4.5:44 ready serving"]),
    ("ns4/ep4", "p45", TCP, &["4.4.4.6:45 local ready serving"]),
];
#[rustfmt::skip]
const LOCAL_IPS_6: &[PortEndpoints] = &[
    ("ns1/ep1", "p11", TCP, &["1.1.1.1:11 serving terminating"]),
    ("ns2/ep2", "p22", TCP, &["2.2.2.2:22 local serving terminating", "2.2.2.22:22 local serving terminating"]),
    ("ns2/ep2", "p23", TCP, &["2.2.2.3:23 local serving terminating"]),
    ("ns4/ep4", "p44", TCP, &["4.4.4.4:44 local serving terminating", "4.4.4.5:44 serving terminating"]),
    ("ns4/ep4", "p45", TCP, &["4.4.4.6:45 local serving terminating"]),
];

#[rustfmt::skip]
static CASES: &[Case] = &[
    // ---- endpointslicecache_test.go: TestEndpointsMapFromESC ----
    Case {
        test: "TestEndpointsMapFromESC",
        name: "1 slice, 2 hosts, ports 80,443",
        node: "host1",
        before: || vec![generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)])],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.1.1:80 ready serving", "10.0.1.2:80 local ready serving", "10.0.1.3:80 ready serving"]),
            ("ns1/svc1", "port-1", TCP, &["10.0.1.1:443 ready serving", "10.0.1.2:443 local ready serving", "10.0.1.3:443 ready serving"]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointsMapFromESC",
        name: "2 slices, same port",
        before: || vec![
            generate("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)]),
            generate("svc1", "ns1", 2, 3, 999, 999, &[], &[Some(80)]),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.1:80 ready serving", "10.0.1.2:80 ready serving", "10.0.1.3:80 ready serving",
                "10.0.2.1:80 ready serving", "10.0.2.2:80 ready serving", "10.0.2.3:80 ready serving",
            ]),
        ]),
        ..CASE
    },
    // Upstream's two slices here share a name (svc1-1): the second is an update of the first.
    Case {
        test: "TestEndpointsMapFromESC",
        name: "2 overlapping slices, same port",
        before: || vec![
            generate("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)]),
            generate("svc1", "ns1", 1, 4, 999, 999, &[], &[Some(80)]),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.1:80 ready serving", "10.0.1.2:80 ready serving",
                "10.0.1.3:80 ready serving", "10.0.1.4:80 ready serving",
            ]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointsMapFromESC",
        name: "2 slices, overlapping endpoints, some endpoints unready in 1 or both",
        before: || vec![
            generate("svc1", "ns1", 1, 10, 3, 999, &[], &[Some(80)]),
            generate("svc1", "ns1", 1, 10, 6, 999, &[], &[Some(80)]),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.10:80 ready serving", "10.0.1.1:80 ready serving", "10.0.1.2:80 ready serving",
                "10.0.1.3:80 ready serving", "10.0.1.4:80 ready serving", "10.0.1.5:80 ready serving",
                "10.0.1.6:80", "10.0.1.7:80 ready serving", "10.0.1.8:80 ready serving",
                "10.0.1.9:80 ready serving",
            ]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointsMapFromESC",
        name: "2 slices, overlapping endpoints, some endpoints unready and some endpoints terminating",
        before: || vec![
            generate("svc1", "ns1", 1, 10, 3, 5, &[], &[Some(80)]),
            generate("svc1", "ns1", 1, 10, 6, 5, &[], &[Some(80)]),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.10:80 serving terminating", "10.0.1.1:80 ready serving",
                "10.0.1.2:80 ready serving", "10.0.1.3:80 ready serving", "10.0.1.4:80 ready serving",
                "10.0.1.5:80 serving terminating", "10.0.1.6:80", "10.0.1.7:80 ready serving",
                "10.0.1.8:80 ready serving", "10.0.1.9:80 ready serving",
            ]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointsMapFromESC",
        name: "2 slices, overlapping endpoints, all unready",
        before: || vec![
            generate("svc1", "ns1", 1, 10, 1, 999, &[], &[Some(80)]),
            generate("svc1", "ns1", 1, 10, 1, 999, &[], &[Some(80)]),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.10:80", "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80",
                "10.0.1.5:80", "10.0.1.6:80", "10.0.1.7:80", "10.0.1.8:80", "10.0.1.9:80",
            ]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointsMapFromESC",
        name: "3 slices with different services and namespaces",
        before: || vec![
            generate("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)]),
            generate("svc2", "ns1", 2, 3, 999, 999, &[], &[Some(80)]),
            generate("svc1", "ns2", 3, 3, 999, 999, &[], &[Some(80)]),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.1.1:80 ready serving", "10.0.1.2:80 ready serving", "10.0.1.3:80 ready serving"]),
            ("ns1/svc2", "port-0", TCP, &["10.0.2.1:80 ready serving", "10.0.2.2:80 ready serving", "10.0.2.3:80 ready serving"]),
            ("ns2/svc1", "port-0", TCP, &["10.0.3.1:80 ready serving", "10.0.3.2:80 ready serving", "10.0.3.3:80 ready serving"]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointsMapFromESC",
        name: "Nil port should not break anything",
        node: "host1",
        before: || vec![generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[None])],
        want: Want::Endpoints(&[]),
        ..CASE
    },
    Case {
        test: "TestEndpointsMapFromESC",
        name: "Different endpoints with duplicate IPs should not be filtered",
        node: "host1",
        before: || vec![
            generate_with_offset("svc1", "ns1", 1, 1, 2, 999, 999, &["host1", "host2"], &[Some(80)]),
            generate_with_offset("svc1", "ns1", 2, 1, 2, 999, 999, &["host1", "host2"], &[Some(8080)]),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.1:80 ready serving", "10.0.1.1:8080 ready serving",
                "10.0.1.2:80 local ready serving", "10.0.1.2:8080 local ready serving",
            ]),
        ]),
        ..CASE
    },
    // ---- endpointslicecache_test.go: TestEndpointInfoByServicePort ----
    Case {
        test: "TestEndpointInfoByServicePort",
        name: "simple use case with 3 endpoints",
        node: "host1",
        before: || vec![generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80)])],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.1.1:80 ready serving", "10.0.1.2:80 local ready serving", "10.0.1.3:80 ready serving"]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointInfoByServicePort",
        name: "4 different slices with duplicate IPs",
        node: "host1",
        before: || vec![
            generate_with_offset("svc1", "ns1", 1, 1, 2, 999, 999, &["host1", "host2"], &[Some(80)]),
            generate_with_offset("svc1", "ns1", 2, 1, 2, 999, 999, &["host1", "host2"], &[Some(8080)]),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.1:80 ready serving", "10.0.1.2:80 local ready serving",
                "10.0.1.1:8080 ready serving", "10.0.1.2:8080 local ready serving",
            ]),
        ]),
        ..CASE
    },
    // ---- endpoints_test.go: TestGetLocalEndpointIPs ----
    Case {
        test: "TestGetLocalEndpointIPs",
        name: "Case[0]: nothing",
        node: HOST,
        want: Want::Endpoints(&[]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestGetLocalEndpointIPs",
        name: "Case[1]: unnamed port",
        node: HOST,
        before: || slices_from(LOCAL_IPS_1),
        want: Want::Endpoints(LOCAL_IPS_1),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestGetLocalEndpointIPs",
        name: "Case[2]: unnamed port local",
        node: HOST,
        before: || slices_from(LOCAL_IPS_2),
        want: Want::Endpoints(LOCAL_IPS_2),
        local_ready: Some(&[("ns1/ep1", 1)]),
        ..CASE
    },
    Case {
        test: "TestGetLocalEndpointIPs",
        name: "Case[3]: named local and non-local ports for the same IP.",
        node: HOST,
        before: || slices_from(LOCAL_IPS_3),
        want: Want::Endpoints(LOCAL_IPS_3),
        local_ready: Some(&[("ns1/ep1", 1)]),
        ..CASE
    },
    Case {
        test: "TestGetLocalEndpointIPs",
        name: "Case[4]: named local and non-local ports for different IPs.",
        node: HOST,
        before: || slices_from(LOCAL_IPS_4),
        want: Want::Endpoints(LOCAL_IPS_4),
        local_ready: Some(&[("ns2/ep2", 3), ("ns4/ep4", 2)]),
        ..CASE
    },
    Case {
        test: "TestGetLocalEndpointIPs",
        name: "Case[5]: named local and non-local ports for different IPs, some not ready.",
        node: HOST,
        before: || slices_from(LOCAL_IPS_5),
        want: Want::Endpoints(LOCAL_IPS_5),
        local_ready: Some(&[("ns2/ep2", 2), ("ns4/ep4", 2)]),
        ..CASE
    },
    Case {
        test: "TestGetLocalEndpointIPs",
        name: "Case[6]: all endpoints are terminating,, so getLocalReadyEndpointIPs should return 0 ready endpoints",
        node: HOST,
        before: || slices_from(LOCAL_IPS_6),
        want: Want::Endpoints(LOCAL_IPS_6),
        local_ready: Some(&[]),
        ..CASE
    },
    // ---- endpoints_test.go: TestUpdateEndpointsMap (end state and local ready endpoints) ----
    Case {
        test: "TestUpdateEndpointsMap",
        name: "empty",
        node: HOST,
        want: Want::Endpoints(&[]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "no change, unnamed port",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, unnamed_port())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, unnamed_port()))],
        want: Want::Endpoints(&[("ns1/ep1", "", UDP, &["1.1.1.1:11 ready serving"])]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "no change, named port, local",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, named_port_local())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, named_port_local()))],
        want: Want::Endpoints(&[("ns1/ep1", "p11", UDP, &["1.1.1.1:11 local ready serving"])]),
        local_ready: Some(&[("ns1/ep1", 1)]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "no change, multiple slices",
        node: HOST,
        before: || vec![
            test_slice("ns1", "ep1", 1, multiple_subsets_s1()),
            test_slice("ns1", "ep1", 2, multiple_subsets_s2()),
        ],
        change: || vec![
            Event::Apply(test_slice("ns1", "ep1", 1, multiple_subsets_s1())),
            Event::Apply(test_slice("ns1", "ep1", 2, multiple_subsets_s2())),
        ],
        want: Want::Endpoints(&[
            ("ns1/ep1", "p11", UDP, &["1.1.1.1:11 ready serving"]),
            ("ns1/ep1", "p12", UDP, &["1.1.1.2:12 ready serving"]),
        ]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "no change, multiple slices, multiple ports, local",
        node: HOST,
        before: || vec![
            test_slice("ns1", "ep1", 1, multiple_subsets_multiple_ports_local_s1()),
            test_slice("ns1", "ep1", 2, multiple_subsets_multiple_ports_local_s2()),
        ],
        change: || vec![
            Event::Apply(test_slice("ns1", "ep1", 1, multiple_subsets_multiple_ports_local_s1())),
            Event::Apply(test_slice("ns1", "ep1", 2, multiple_subsets_multiple_ports_local_s2())),
        ],
        want: Want::Endpoints(&[
            ("ns1/ep1", "p11", UDP, &["1.1.1.1:11 local ready serving"]),
            ("ns1/ep1", "p12", UDP, &["1.1.1.1:12 local ready serving"]),
            ("ns1/ep1", "p13", UDP, &["1.1.1.3:13 ready serving"]),
        ]),
        local_ready: Some(&[("ns1/ep1", 1)]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "no change, multiple services, slices, IPs, and ports",
        node: HOST,
        before: || vec![
            test_slice("ns1", "ep1", 1, multiple_subsets_ips_ports1_s1()),
            test_slice("ns1", "ep1", 2, multiple_subsets_ips_ports1_s2()),
            test_slice("ns2", "ep2", 1, multiple_subsets_ips_ports2()),
        ],
        change: || vec![
            Event::Apply(test_slice("ns1", "ep1", 1, multiple_subsets_ips_ports1_s1())),
            Event::Apply(test_slice("ns1", "ep1", 2, multiple_subsets_ips_ports1_s2())),
            Event::Apply(test_slice("ns2", "ep2", 1, multiple_subsets_ips_ports2())),
        ],
        want: Want::Endpoints(&[
            ("ns1/ep1", "p11", UDP, &["1.1.1.1:11 ready serving", "1.1.1.2:11 local ready serving"]),
            ("ns1/ep1", "p12", UDP, &["1.1.1.1:12 ready serving", "1.1.1.2:12 local ready serving"]),
            ("ns1/ep1", "p13", UDP, &["1.1.1.3:13 ready serving", "1.1.1.4:13 local ready serving"]),
            ("ns1/ep1", "p14", UDP, &["1.1.1.3:14 ready serving", "1.1.1.4:14 local ready serving"]),
            ("ns2/ep2", "p21", UDP, &["2.2.2.1:21 ready serving", "2.2.2.2:21 local ready serving"]),
            ("ns2/ep2", "p22", UDP, &["2.2.2.1:22 ready serving", "2.2.2.2:22 local ready serving"]),
        ]),
        local_ready: Some(&[("ns1/ep1", 2), ("ns2/ep2", 1)]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "add an EndpointSlice",
        node: HOST,
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, unnamed_port_local()))],
        want: Want::Endpoints(&[("ns1/ep1", "", UDP, &["1.1.1.1:11 local ready serving"])]),
        local_ready: Some(&[("ns1/ep1", 1)]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "remove an EndpointSlice",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, unnamed_port_local())],
        change: || vec![Event::Delete("ns1", "ep1-1")],
        want: Want::Endpoints(&[]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "add an IP and port",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, named_port())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, named_ports_local_no_local()))],
        want: Want::Endpoints(&[
            ("ns1/ep1", "p11", UDP, &["1.1.1.1:11 ready serving", "1.1.1.2:11 local ready serving"]),
            ("ns1/ep1", "p12", UDP, &["1.1.1.1:12 ready serving", "1.1.1.2:12 local ready serving"]),
        ]),
        local_ready: Some(&[("ns1/ep1", 1)]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "remove an IP and port",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, named_ports_local_no_local())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, named_port()))],
        want: Want::Endpoints(&[("ns1/ep1", "p11", UDP, &["1.1.1.1:11 ready serving"])]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "add a slice to an endpoint",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, named_port())],
        change: || vec![
            Event::Apply(test_slice("ns1", "ep1", 1, multiple_subsets_with_local_s1())),
            Event::Apply(test_slice("ns1", "ep1", 2, multiple_subsets_with_local_s2())),
        ],
        want: Want::Endpoints(&[
            ("ns1/ep1", "p11", UDP, &["1.1.1.1:11 ready serving"]),
            ("ns1/ep1", "p12", UDP, &["1.1.1.2:12 local ready serving"]),
        ]),
        local_ready: Some(&[("ns1/ep1", 1)]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "remove a slice from an endpoint",
        node: HOST,
        before: || vec![
            test_slice("ns1", "ep1", 1, multiple_subsets_s1()),
            test_slice("ns1", "ep1", 2, multiple_subsets_s2()),
        ],
        change: || vec![
            Event::Apply(test_slice("ns1", "ep1", 1, named_port())),
            Event::Delete("ns1", "ep1-2"),
        ],
        want: Want::Endpoints(&[("ns1/ep1", "p11", UDP, &["1.1.1.1:11 ready serving"])]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "rename a port",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, named_port())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, named_port_renamed()))],
        want: Want::Endpoints(&[("ns1/ep1", "p11-2", UDP, &["1.1.1.1:11 ready serving"])]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "renumber a port",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, named_port())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, named_port_renumbered()))],
        want: Want::Endpoints(&[("ns1/ep1", "p11", UDP, &["1.1.1.1:22 ready serving"])]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "complex add and remove",
        node: HOST,
        before: || vec![
            test_slice("ns1", "ep1", 1, complex_before1()),
            test_slice("ns2", "ep2", 1, complex_before2_s1()),
            test_slice("ns2", "ep2", 2, complex_before2_s2()),
            test_slice("ns4", "ep4", 1, complex_before4_s1()),
            test_slice("ns4", "ep4", 2, complex_before4_s2()),
        ],
        change: || vec![
            Event::Apply(test_slice("ns1", "ep1", 1, complex_after1_s1())),
            Event::Apply(test_slice("ns1", "ep1", 2, complex_after1_s2())),
            Event::Delete("ns2", "ep2-1"),
            Event::Delete("ns2", "ep2-2"),
            Event::Apply(test_slice("ns3", "ep3", 1, complex_after3())),
            Event::Apply(test_slice("ns4", "ep4", 1, complex_after4())),
            Event::Delete("ns4", "ep4-2"),
        ],
        want: Want::Endpoints(&[
            ("ns1/ep1", "p11", UDP, &["1.1.1.11:11 ready serving", "1.1.1.1:11 ready serving"]),
            ("ns1/ep1", "p12", UDP, &["1.1.1.2:12 ready serving"]),
            ("ns1/ep1", "p122", UDP, &["1.1.1.2:122 ready serving"]),
            ("ns3/ep3", "p33", UDP, &["3.3.3.3:33 ready serving"]),
            ("ns4/ep4", "p44", UDP, &["4.4.4.4:44 local ready serving"]),
        ]),
        local_ready: Some(&[("ns4/ep4", 1)]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "change from 0 endpoint address to 1 unnamed port",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, empty_endpoint())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, unnamed_port()))],
        want: Want::Endpoints(&[("ns1/ep1", "", UDP, &["1.1.1.1:11 ready serving"])]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "change from ready to terminating pod",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, unnamed_port_ready())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, unnamed_port_terminating()))],
        want: Want::Endpoints(&[("ns1/ep1", "", UDP, &["1.1.1.1:11 serving terminating"])]),
        local_ready: Some(&[]),
        ..CASE
    },
    Case {
        test: "TestUpdateEndpointsMap",
        name: "change from terminating to empty pod",
        node: HOST,
        before: || vec![test_slice("ns1", "ep1", 1, unnamed_port_terminating())],
        change: || vec![Event::Apply(test_slice("ns1", "ep1", 1, empty_endpoint()))],
        want: Want::Endpoints(&[]),
        local_ready: Some(&[]),
        ..CASE
    },
    // ---- endpoints_test.go: TestEndpointSliceUpdate (end state) ----
    Case {
        test: "TestEndpointSliceUpdate",
        name: "add a simple slice that doesn't already exist",
        node: "host1",
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.1.1:80 ready serving", "10.0.1.2:80 local ready serving", "10.0.1.3:80 ready serving"]),
            ("ns1/svc1", "port-1", TCP, &["10.0.1.1:443 ready serving", "10.0.1.2:443 local ready serving", "10.0.1.3:443 ready serving"]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "add the same slice that already exists",
        node: "host1",
        before: || vec![generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)])],
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)]))],
        want: Want::Unchanged,
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "add an FQDN slice (invalid address type)",
        node: "host1",
        before: || vec![generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)])],
        change: || vec![Event::Apply(fqdn(generate("svc1", "ns1", 2, 5, 999, 999, &["host1"], &[Some(80), Some(443)])))],
        want: Want::Unchanged,
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "add a slice that overlaps with existing state",
        node: "host1",
        before: || vec![
            generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)]),
            generate("svc1", "ns1", 2, 2, 999, 999, &["host1", "host2"], &[Some(80), Some(443)]),
        ],
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 5, 999, 999, &["host1"], &[Some(80), Some(443)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.1:80 local ready serving", "10.0.1.2:80 local ready serving",
                "10.0.1.3:80 local ready serving", "10.0.1.4:80 local ready serving",
                "10.0.1.5:80 local ready serving", "10.0.2.1:80 ready serving",
                "10.0.2.2:80 local ready serving",
            ]),
            ("ns1/svc1", "port-1", TCP, &[
                "10.0.1.1:443 local ready serving", "10.0.1.2:443 local ready serving",
                "10.0.1.3:443 local ready serving", "10.0.1.4:443 local ready serving",
                "10.0.1.5:443 local ready serving", "10.0.2.1:443 ready serving",
                "10.0.2.2:443 local ready serving",
            ]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "add a slice that overlaps with existing state and partial ports",
        node: "host1",
        before: || vec![
            generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)]),
            generate("svc1", "ns1", 2, 2, 999, 999, &["host1", "host2"], &[Some(80), Some(443)]),
        ],
        change: || vec![Event::Apply(generate_with_offset("svc1", "ns1", 3, 1, 5, 999, 999, &["host1"], &[Some(80)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.1:80 local ready serving", "10.0.1.2:80 local ready serving",
                "10.0.1.3:80 local ready serving", "10.0.1.4:80 local ready serving",
                "10.0.1.5:80 local ready serving", "10.0.2.1:80 ready serving",
                "10.0.2.2:80 local ready serving",
            ]),
            ("ns1/svc1", "port-1", TCP, &[
                "10.0.1.1:443 ready serving", "10.0.1.2:443 local ready serving",
                "10.0.1.3:443 ready serving", "10.0.2.1:443 ready serving",
                "10.0.2.2:443 local ready serving",
            ]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "remove a slice that overlaps with existing state",
        node: "host1",
        before: || vec![
            generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)]),
            generate("svc1", "ns1", 2, 2, 999, 999, &["host1", "host2"], &[Some(80), Some(443)]),
        ],
        change: || vec![Event::Delete("ns1", "svc1-1")],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.2.1:80 ready serving", "10.0.2.2:80 local ready serving"]),
            ("ns1/svc1", "port-1", TCP, &["10.0.2.1:443 ready serving", "10.0.2.2:443 local ready serving"]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "remove a slice that doesn't even exist in current state",
        node: "host1",
        before: || vec![
            generate("svc1", "ns1", 1, 5, 999, 999, &["host1"], &[Some(80), Some(443)]),
            generate("svc1", "ns1", 2, 2, 999, 999, &["host1"], &[Some(80), Some(443)]),
        ],
        change: || vec![Event::Delete("ns1", "svc1-3")],
        want: Want::Unchanged,
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "transition all endpoints to unready state",
        node: "host1",
        before: || vec![generate("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[Some(80), Some(443)])],
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 3, 1, 999, &["host1"], &[Some(80), Some(443)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.1.1:80 local", "10.0.1.2:80 local", "10.0.1.3:80 local"]),
            ("ns1/svc1", "port-1", TCP, &["10.0.1.1:443 local", "10.0.1.2:443 local", "10.0.1.3:443 local"]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "transition all endpoints to ready state",
        node: "host1",
        before: || vec![generate("svc1", "ns1", 1, 2, 1, 999, &["host1", "host2"], &[Some(80), Some(443)])],
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 2, 999, 999, &["host1"], &[Some(80), Some(443)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.1.1:80 local ready serving", "10.0.1.2:80 local ready serving"]),
            ("ns1/svc1", "port-1", TCP, &["10.0.1.1:443 local ready serving", "10.0.1.2:443 local ready serving"]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "transition some endpoints to ready state",
        node: "host1",
        before: || vec![
            generate("svc1", "ns1", 1, 3, 2, 999, &["host1"], &[Some(80), Some(443)]),
            generate("svc1", "ns1", 2, 2, 2, 999, &["host1"], &[Some(80), Some(443)]),
        ],
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 3, 3, 999, &["host1"], &[Some(80), Some(443)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.1:80 local ready serving", "10.0.1.2:80 local ready serving", "10.0.1.3:80 local",
                "10.0.2.1:80 local ready serving", "10.0.2.2:80 local",
            ]),
            ("ns1/svc1", "port-1", TCP, &[
                "10.0.1.1:443 local ready serving", "10.0.1.2:443 local ready serving", "10.0.1.3:443 local",
                "10.0.2.1:443 local ready serving", "10.0.2.2:443 local",
            ]),
        ]),
        ..CASE
    },
    Case {
        test: "TestEndpointSliceUpdate",
        name: "transition some endpoints to terminating state",
        node: "host1",
        before: || vec![
            generate("svc1", "ns1", 1, 3, 2, 2, &["host1"], &[Some(80), Some(443)]),
            generate("svc1", "ns1", 2, 2, 2, 2, &["host1"], &[Some(80), Some(443)]),
        ],
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 3, 3, 2, &["host1"], &[Some(80), Some(443)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &[
                "10.0.1.1:80 local ready serving", "10.0.1.2:80 local serving terminating",
                "10.0.1.3:80 local", "10.0.2.1:80 local ready serving", "10.0.2.2:80 local terminating",
            ]),
            ("ns1/svc1", "port-1", TCP, &[
                "10.0.1.1:443 local ready serving", "10.0.1.2:443 local serving terminating",
                "10.0.1.3:443 local", "10.0.2.1:443 local ready serving", "10.0.2.2:443 local terminating",
            ]),
        ]),
        ..CASE
    },
    // ---- endpoints_test.go: TestCheckoutChanges (the current state of each change) ----
    Case {
        test: "TestCheckoutChanges",
        name: "empty slices",
        want: Want::Endpoints(&[]),
        ..CASE
    },
    Case {
        test: "TestCheckoutChanges",
        name: "adding initial slice",
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 3, 3, 2, &["host1"], &[Some(80)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.1.1:80 ready serving", "10.0.1.2:80 serving terminating", "10.0.1.3:80"]),
        ]),
        ..CASE
    },
    Case {
        test: "TestCheckoutChanges",
        name: "removing port in update",
        before: || vec![generate("svc1", "ns1", 1, 3, 3, 999, &["host1"], &[Some(80), Some(443)])],
        change: || vec![Event::Apply(generate("svc1", "ns1", 1, 3, 3, 999, &["host1"], &[Some(80)]))],
        want: Want::Endpoints(&[
            ("ns1/svc1", "port-0", TCP, &["10.0.1.1:80 ready serving", "10.0.1.2:80 ready serving", "10.0.1.3:80"]),
        ]),
        ..CASE
    },
    // ---- lb: kube-proxy behaviour no upstream table case pins (endpointslicecache.go,
    // endpointschangetracker.go and kube-proxy's informer label selector) ----
    Case {
        test: "lb",
        name: "a slice without the kubernetes.io/service-name label is ignored",
        before: || vec![unlabelled(generate("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)]))],
        want: Want::Endpoints(&[]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "a slice labelled service.kubernetes.io/service-proxy-name is ignored",
        before: || vec![
            labelled(generate("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)]), LABEL_PROXY_NAME, "other-proxy"),
            generate("svc2", "ns1", 2, 1, 999, 999, &[], &[Some(80)]),
        ],
        want: Want::Endpoints(&[("ns1/svc2", "port-0", TCP, &["10.0.2.1:80 ready serving"])]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "a slice labelled service.kubernetes.io/headless is ignored",
        before: || vec![labelled(generate("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)]), LABEL_HEADLESS, "")],
        want: Want::Endpoints(&[]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "an FQDN slice gives no endpoints",
        before: || vec![fqdn(generate("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)]))],
        want: Want::Endpoints(&[]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "an IPv6 slice gives no endpoints (lb proxies IPv4)",
        before: || vec![slice(json!({
            "metadata": {"namespace": "ns1", "name": "svc1-v6", "labels": {LABEL_SERVICE_NAME: "svc1"}},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00:10::1"]}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        }))],
        want: Want::Endpoints(&[]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "an endpoint without addresses is skipped, the others are kept",
        before: || vec![test_slice("ns1", "svc1", 1, (
            json!([{"addresses": []}, {"addresses": ["10.0.0.2"]}]),
            json!([{"name": "http", "port": 80, "protocol": "TCP"}]),
        ))],
        want: Want::Endpoints(&[("ns1/svc1", "http", TCP, &["10.0.0.2:80 ready serving"])]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "only the first address of an endpoint counts",
        before: || vec![test_slice("ns1", "svc1", 1, (
            json!([{"addresses": ["10.0.0.1", "10.0.0.9"]}]),
            json!([{"name": "http", "port": 80, "protocol": "TCP"}]),
        ))],
        want: Want::Endpoints(&[("ns1/svc1", "http", TCP, &["10.0.0.1:80 ready serving"])]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "conditions: ready and serving default to true, terminating to false",
        before: || vec![test_slice("ns1", "svc1", 1, (
            json!([
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"serving": false}},
                {"addresses": ["10.0.0.4"], "conditions": {"terminating": true}},
            ]),
            json!([{"name": "http", "port": 80, "protocol": "TCP"}]),
        ))],
        want: Want::Endpoints(&[("ns1/svc1", "http", TCP, &[
            "10.0.0.1:80 ready serving", "10.0.0.2:80 serving", "10.0.0.3:80 ready",
            "10.0.0.4:80 ready serving terminating",
        ])]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "a port without a number is ignored, the others are kept",
        before: || vec![test_slice("ns1", "svc1", 1, (
            json!([{"addresses": ["10.0.0.1"]}]),
            json!([{"name": "all", "protocol": "TCP"}, {"name": "http", "port": 80, "protocol": "TCP"}]),
        ))],
        want: Want::Endpoints(&[("ns1/svc1", "http", TCP, &["10.0.0.1:80 ready serving"])]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "a port numbered 0 is ignored (and reported)",
        before: || vec![test_slice("ns1", "svc1", 1, (
            json!([{"addresses": ["10.0.0.1"]}]),
            json!([{"name": "zero", "port": 0, "protocol": "TCP"}, {"name": "http", "port": 80, "protocol": "TCP"}]),
        ))],
        want: Want::Endpoints(&[("ns1/svc1", "http", TCP, &["10.0.0.1:80 ready serving"])]),
        problems: 1,
        ..CASE
    },
    Case {
        test: "lb",
        name: "the same ip:port in two slices: the local copy wins, whichever slice comes first",
        node: HOST,
        before: || vec![
            test_slice("ns1", "svc1", 1, (json!([at_here("10.0.0.1")]), json!([tcp("http", 80)]))),
            test_slice("ns1", "svc1", 2, (json!([at_node("10.0.0.1", "other")]), json!([tcp("http", 80)]))),
            test_slice("ns1", "svc2", 1, (json!([at_node("10.0.0.2", "other")]), json!([tcp("http", 80)]))),
            test_slice("ns1", "svc2", 2, (json!([at_here("10.0.0.2")]), json!([tcp("http", 80)]))),
        ],
        want: Want::Endpoints(&[
            ("ns1/svc1", "http", TCP, &["10.0.0.1:80 local ready serving"]),
            ("ns1/svc2", "http", TCP, &["10.0.0.2:80 local ready serving"]),
        ]),
        ..CASE
    },
    Case {
        test: "lb",
        name: "one port name with two protocols is two service ports",
        before: || vec![test_slice("ns1", "dns", 1, (
            json!([{"addresses": ["10.0.0.1"]}]),
            json!([udp("dns", 53), tcp("dns", 5353)]),
        ))],
        want: Want::Endpoints(&[
            ("ns1/dns", "dns", TCP, &["10.0.0.1:5353 ready serving"]),
            ("ns1/dns", "dns", UDP, &["10.0.0.1:53 ready serving"]),
        ]),
        ..CASE
    },
    // The API server defaults a missing port name to "" and protocol to TCP; manifests skip it.
    Case {
        test: "lb",
        name: "a port without name or protocol is the unnamed TCP port",
        before: || vec![test_slice("ns1", "svc1", 1, (
            json!([{"addresses": ["10.0.0.1"]}]),
            json!([{"port": 80}]),
        ))],
        want: Want::Endpoints(&[("ns1/svc1", "", TCP, &["10.0.0.1:80 ready serving"])]),
        ..CASE
    },
];

/// Through `desired()`: which Service port a slice port feeds, by (name, protocol).
struct DesiredCase {
    name: &'static str,
    /// Service ns1/svc1's ports, as JSON.
    service_ports: fn() -> Value,
    slices: fn() -> Vec<EndpointSlice>,
    /// The cluster-policy backend set of each service port: (name, protocol, "ip:port"s).
    want: &'static [(&'static str, Protocol, &'static [&'static str])],
}

#[rustfmt::skip]
static DESIRED_CASES: &[DesiredCase] = &[
    DesiredCase {
        name: "service ports take the slice ports of the same name and protocol",
        service_ports: || json!([
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ]),
        slices: || vec![test_slice("ns1", "svc1", 1, (
            json!([{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]),
            json!([tcp("http", 8080), udp("dns", 5353), tcp("dns", 5353)]),
        ))],
        want: &[
            ("dns", UDP, &["10.0.0.1:5353", "10.0.0.2:5353"]),
            ("dns-tcp", TCP, &[]),
            ("http", TCP, &["10.0.0.1:8080", "10.0.0.2:8080"]),
        ],
    },
    DesiredCase {
        name: "a slice port of another protocol feeds nothing",
        service_ports: || json!([{"name": "http", "port": 80, "protocol": "TCP"}]),
        slices: || vec![test_slice("ns1", "svc1", 1, (
            json!([{"addresses": ["10.0.0.1"]}]),
            json!([udp("http", 8080)]),
        ))],
        want: &[("http", TCP, &[])],
    },
    DesiredCase {
        name: "slices of other services and namespaces feed nothing",
        service_ports: || json!([{"port": 80}]),
        slices: || vec![
            test_slice("ns1", "svc1", 1, (json!([at("10.0.1.1")]), json!([tcp("", 8080)]))),
            test_slice("ns1", "svc2", 1, (json!([at("10.0.2.1")]), json!([tcp("", 8080)]))),
            test_slice("ns2", "svc1", 1, (json!([at("10.0.3.1")]), json!([tcp("", 8080)]))),
        ],
        want: &[("", TCP, &["10.0.1.1:8080"])],
    },
];

// ---- slice builders ----

fn slice(value: Value) -> EndpointSlice {
    let mut value = value;
    value["apiVersion"] = json!("discovery.k8s.io/v1");
    value["kind"] = json!("EndpointSlice");
    serde_json::from_value(value).expect("a valid EndpointSlice")
}

/// upstream's generateEndpointSliceWithOffset: slice `{service}-{slice_num}` with endpoints
/// 10.0.{offset}.1 ..= 10.0.{offset}.{count}; endpoint i is unready when i % unready_mod == 0 and
/// terminating when i % terminating_mod == 0 (ready = neither, serving = not unready), all three
/// conditions set; it runs on hosts[i % hosts.len()]; ports are TCP, named port-0, port-1, ...
#[allow(clippy::too_many_arguments)]
fn generate_with_offset(
    service: &str,
    namespace: &str,
    slice_num: u32,
    offset: u32,
    count: u32,
    unready_mod: u32,
    terminating_mod: u32,
    hosts: &[&str],
    ports: &[Option<i32>],
) -> EndpointSlice {
    let ports: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(i, number)| {
            let mut port = json!({"name": format!("port-{i}"), "protocol": "TCP"});
            if let Some(number) = number {
                port["port"] = json!(number);
            }
            port
        })
        .collect();
    let endpoints: Vec<Value> = (1..=count)
        .map(|i| {
            let unready = i % unready_mod == 0;
            let terminating = i % terminating_mod == 0;
            let mut endpoint = json!({
                "addresses": [format!("10.0.{offset}.{i}")],
                "conditions": {
                    "ready": !unready && !terminating,
                    "serving": !unready,
                    "terminating": terminating,
                },
            });
            if !hosts.is_empty() {
                endpoint["nodeName"] = json!(hosts[i as usize % hosts.len()]);
            }
            endpoint
        })
        .collect();
    slice(json!({
        "metadata": {
            "name": format!("{service}-{slice_num}"),
            "namespace": namespace,
            "labels": {LABEL_SERVICE_NAME: service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
}

/// upstream's generateEndpointSlice: the offset is the slice number.
#[allow(clippy::too_many_arguments)]
fn generate(
    service: &str,
    namespace: &str,
    slice_num: u32,
    count: u32,
    unready_mod: u32,
    terminating_mod: u32,
    hosts: &[&str],
    ports: &[Option<i32>],
) -> EndpointSlice {
    generate_with_offset(
        service,
        namespace,
        slice_num,
        slice_num,
        count,
        unready_mod,
        terminating_mod,
        hosts,
        ports,
    )
}

/// upstream's makeTestEndpointSlice: IPv4 slice `{service}-{n}` of `service`, with the given
/// endpoints and ports (JSON arrays, or null for none).
fn test_slice(
    namespace: &str,
    service: &str,
    n: u32,
    (endpoints, ports): (Value, Value),
) -> EndpointSlice {
    slice(json!({
        "metadata": {
            "name": format!("{service}-{n}"),
            "namespace": namespace,
            "labels": {LABEL_SERVICE_NAME: service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
}

/// One slice per entry of an endpoints table (see TestGetLocalEndpointIPs), every condition set.
fn slices_from(table: &[PortEndpoints]) -> Vec<EndpointSlice> {
    table
        .iter()
        .enumerate()
        .map(|(k, (service, port, proto, endpoints))| {
            let (namespace, name) = service.split_once('/').expect("namespace/name");
            let mut number = 0;
            let endpoints: Vec<Value> = endpoints
                .iter()
                .map(|description| {
                    let (addr, flags) = parse(description);
                    number = addr.port();
                    let mut endpoint = json!({
                        "addresses": [addr.ip().to_string()],
                        "conditions": {
                            "ready": flags.contains(&"ready"),
                            "serving": flags.contains(&"serving"),
                            "terminating": flags.contains(&"terminating"),
                        },
                    });
                    if flags.contains(&"local") {
                        endpoint["nodeName"] = json!(HOST);
                    }
                    endpoint
                })
                .collect();
            let ports = json!([{"name": port, "port": number, "protocol": proto.as_str()}]);
            test_slice(namespace, name, k as u32 + 1, (json!(endpoints), ports))
        })
        .collect()
}

fn fqdn(mut slice: EndpointSlice) -> EndpointSlice {
    slice.address_type = "FQDN".into();
    slice
}

fn unlabelled(mut slice: EndpointSlice) -> EndpointSlice {
    slice.metadata.labels = None;
    slice
}

fn labelled(mut slice: EndpointSlice, key: &str, value: &str) -> EndpointSlice {
    let labels = slice.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(key.into(), value.into());
    slice
}

fn at(ip: &str) -> Value {
    json!({"addresses": [ip]})
}

fn at_here(ip: &str) -> Value {
    at_node(ip, HOST)
}

fn at_node(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node})
}

fn udp(name: &str, port: i32) -> Value {
    json!({"name": name, "port": port, "protocol": "UDP"})
}

fn tcp(name: &str, port: i32) -> Value {
    json!({"name": name, "port": port, "protocol": "TCP"})
}

// TestUpdateEndpointsMap's slice contents: (endpoints, ports).

fn empty_endpoint() -> (Value, Value) {
    (json!([]), Value::Null)
}

fn unnamed_port() -> (Value, Value) {
    (json!([at("1.1.1.1")]), json!([udp("", 11)]))
}

fn unnamed_port_with(conditions: Value) -> (Value, Value) {
    let endpoint = json!({"addresses": ["1.1.1.1"], "conditions": conditions});
    (json!([endpoint]), json!([udp("", 11)]))
}

fn unnamed_port_ready() -> (Value, Value) {
    unnamed_port_with(json!({"ready": true, "serving": true, "terminating": false}))
}

fn unnamed_port_terminating() -> (Value, Value) {
    unnamed_port_with(json!({"ready": false, "serving": true, "terminating": true}))
}

fn unnamed_port_local() -> (Value, Value) {
    (json!([at_here("1.1.1.1")]), json!([udp("", 11)]))
}

fn named_port_local() -> (Value, Value) {
    (json!([at_here("1.1.1.1")]), json!([udp("p11", 11)]))
}

fn named_port() -> (Value, Value) {
    (json!([at("1.1.1.1")]), json!([udp("p11", 11)]))
}

fn named_port_renamed() -> (Value, Value) {
    (json!([at("1.1.1.1")]), json!([udp("p11-2", 11)]))
}

fn named_port_renumbered() -> (Value, Value) {
    (json!([at("1.1.1.1")]), json!([udp("p11", 22)]))
}

fn named_ports_local_no_local() -> (Value, Value) {
    (
        json!([at("1.1.1.1"), at_here("1.1.1.2")]),
        json!([udp("p11", 11), udp("p12", 12)]),
    )
}

fn multiple_subsets_s1() -> (Value, Value) {
    (json!([at("1.1.1.1")]), json!([udp("p11", 11)]))
}

fn multiple_subsets_s2() -> (Value, Value) {
    (json!([at("1.1.1.2")]), json!([udp("p12", 12)]))
}

fn multiple_subsets_with_local_s1() -> (Value, Value) {
    (json!([at("1.1.1.1")]), json!([udp("p11", 11)]))
}

fn multiple_subsets_with_local_s2() -> (Value, Value) {
    (json!([at_here("1.1.1.2")]), json!([udp("p12", 12)]))
}

fn multiple_subsets_multiple_ports_local_s1() -> (Value, Value) {
    (
        json!([at_here("1.1.1.1")]),
        json!([udp("p11", 11), udp("p12", 12)]),
    )
}

fn multiple_subsets_multiple_ports_local_s2() -> (Value, Value) {
    (json!([at("1.1.1.3")]), json!([udp("p13", 13)]))
}

fn multiple_subsets_ips_ports1_s1() -> (Value, Value) {
    (
        json!([at("1.1.1.1"), at_here("1.1.1.2")]),
        json!([udp("p11", 11), udp("p12", 12)]),
    )
}

fn multiple_subsets_ips_ports1_s2() -> (Value, Value) {
    (
        json!([at("1.1.1.3"), at_here("1.1.1.4")]),
        json!([udp("p13", 13), udp("p14", 14)]),
    )
}

fn multiple_subsets_ips_ports2() -> (Value, Value) {
    (
        json!([at("2.2.2.1"), at_here("2.2.2.2")]),
        json!([udp("p21", 21), udp("p22", 22)]),
    )
}

fn complex_before1() -> (Value, Value) {
    (json!([at("1.1.1.1")]), json!([udp("p11", 11)]))
}

fn complex_before2_s1() -> (Value, Value) {
    (
        json!([at_here("2.2.2.2"), at_here("2.2.2.22")]),
        json!([udp("p22", 22)]),
    )
}

fn complex_before2_s2() -> (Value, Value) {
    (json!([at_here("2.2.2.3")]), json!([udp("p23", 23)]))
}

fn complex_before4_s1() -> (Value, Value) {
    (
        json!([at_here("4.4.4.4"), at_here("4.4.4.5")]),
        json!([udp("p44", 44)]),
    )
}

fn complex_before4_s2() -> (Value, Value) {
    (json!([at_here("4.4.4.6")]), json!([udp("p45", 45)]))
}

fn complex_after1_s1() -> (Value, Value) {
    (
        json!([at("1.1.1.1"), at("1.1.1.11")]),
        json!([udp("p11", 11)]),
    )
}

fn complex_after1_s2() -> (Value, Value) {
    (
        json!([at("1.1.1.2")]),
        json!([udp("p12", 12), udp("p122", 122)]),
    )
}

fn complex_after3() -> (Value, Value) {
    (json!([at("3.3.3.3")]), json!([udp("p33", 33)]))
}

fn complex_after4() -> (Value, Value) {
    (json!([at_here("4.4.4.4")]), json!([udp("p44", 44)]))
}

// ---- runner ----

/// "ip:port" and the flags after it.
fn parse(description: &str) -> (SocketAddrV4, Vec<&str>) {
    let mut words = description.split_whitespace();
    let addr = words.next().and_then(|a| a.parse().ok());
    let addr = addr.unwrap_or_else(|| panic!("{description:?}: no ip:port"));
    (addr, words.collect())
}

fn describe(e: &Endpoint) -> String {
    let mut out = format!("{}:{}", e.ip, e.port);
    for (set, flag) in [
        (e.local, "local"),
        (e.ready, "ready"),
        (e.serving, "serving"),
        (e.terminating, "terminating"),
    ] {
        if set {
            out.push(' ');
            out.push_str(flag);
        }
    }
    out
}

fn shared(slices: &BTreeMap<ObjectRef, EndpointSlice>) -> BTreeMap<ObjectRef, Arc<EndpointSlice>> {
    slices
        .iter()
        .map(|(k, s)| (k.clone(), Arc::new(s.clone())))
        .collect()
}

type Merged = BTreeMap<(String, String, Protocol), Vec<String>>;

fn merged(slices: &BTreeMap<ObjectRef, EndpointSlice>, node: &str) -> (Merged, usize) {
    let mut problems = Vec::new();
    let mut out = Merged::new();
    let mut groups: BTreeMap<ObjectRef, Vec<(&ObjectRef, &EndpointSlice)>> = BTreeMap::new();
    for (name, slice) in slices {
        if let Some(service) = group_of(name, slice) {
            groups.entry(service).or_default().push((name, slice));
        }
    }
    for (service, slices) in groups {
        for (port, endpoints) in merge(slices, node, &mut problems) {
            if endpoints.is_empty() {
                continue;
            }
            let mut list: Vec<String> = endpoints.iter().map(describe).collect();
            list.sort();
            out.insert((service.to_string(), port.name, port.proto), list);
        }
    }
    (out, problems.len())
}

fn expected(table: &[PortEndpoints]) -> Merged {
    let mut out = Merged::new();
    for (service, port, proto, endpoints) in table {
        let list = out
            .entry((service.to_string(), port.to_string(), *proto))
            .or_default();
        list.extend(endpoints.iter().map(|e| e.to_string()));
        list.sort();
    }
    out
}

fn apply(slices: &mut BTreeMap<ObjectRef, EndpointSlice>, event: Event) {
    match event {
        Event::Apply(slice) => {
            let meta = &slice.metadata;
            let key = ObjectRef::new(
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
            );
            slices.insert(key, slice);
        }
        Event::Delete(namespace, name) => {
            slices.remove(&ObjectRef::new(namespace, name));
        }
    }
}

fn diff(want: &Merged, got: &Merged) -> Vec<String> {
    let mut errs = Vec::new();
    for (key, want_list) in want {
        match got.get(key) {
            Some(got_list) if got_list == want_list => {}
            Some(got_list) => errs.push(format!("{key:?}: want {want_list:?}, got {got_list:?}")),
            None => errs.push(format!("{key:?}: want {want_list:?}, got nothing")),
        }
    }
    for (key, got_list) in got {
        if !want.contains_key(key) {
            errs.push(format!("{key:?}: unexpected {got_list:?}"));
        }
    }
    errs
}

/// A LoadBalancer service with externalTrafficPolicy Local and a health check node port for
/// every service the case expects endpoints for; their health checks must report `want`.
fn check_local_ready(
    case: &Case,
    slices: &BTreeMap<ObjectRef, EndpointSlice>,
    endpoints: &Merged,
    want: &[(&str, usize)],
) -> Vec<String> {
    let mut errs = Vec::new();
    let mut ports: BTreeMap<&str, Vec<(&str, Protocol)>> = BTreeMap::new();
    for (service, port, proto) in endpoints.keys() {
        ports
            .entry(service.as_str())
            .or_default()
            .push((port.as_str(), *proto));
    }
    for (service, _) in want {
        assert!(
            ports.contains_key(service),
            "{}: local_ready names {service}, which has no endpoints",
            case.name
        );
    }
    let mut objects = Objects {
        slices: shared(slices),
        ..Objects::default()
    };
    for (k, (service, ports)) in ports.iter().enumerate() {
        let (namespace, name) = service.split_once('/').expect("namespace/name");
        let ports: Vec<Value> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, proto))| {
                json!({
                    "name": port,
                    "protocol": proto.as_str(),
                    "port": 1000 + i,
                    "nodePort": 30000 + 100 * k + i,
                })
            })
            .collect();
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": format!("10.96.0.{}", k + 1),
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 32000 + k,
                "ports": ports,
            },
        }))
        .expect("a valid Service");
        objects
            .services
            .insert(ObjectRef::new(namespace, name), Arc::new(svc));
    }
    let node: NodeContext = NodeContext {
        name: case.node.to_string(),
        nodeport_addrs: Vec::new(),
    };
    let out = desired(&objects, &node);
    if !out.problems.is_empty() {
        errs.push(format!("desired() problems: {:?}", out.problems));
    }
    let got: BTreeMap<String, usize> = out
        .health_checks
        .values()
        .map(|h| (h.service.to_string(), h.local_endpoints))
        .collect();
    for service in ports.keys() {
        let want = want
            .iter()
            .find(|(s, _)| s == service)
            .map_or(0, |(_, n)| *n);
        match got.get(*service) {
            Some(&n) if n == want => {}
            Some(&n) => errs.push(format!("{service}: {n} local ready endpoints, want {want}")),
            None => errs.push(format!("{service}: no health check")),
        }
    }
    errs
}

fn run(case: &Case) -> Vec<String> {
    let mut slices = BTreeMap::new();
    for slice in (case.before)() {
        apply(&mut slices, Event::Apply(slice));
    }
    let (before, _) = merged(&slices, case.node);
    for event in (case.change)() {
        apply(&mut slices, event);
    }
    let (after, problems) = merged(&slices, case.node);
    let mut errs = match &case.want {
        Want::Unchanged => diff(&before, &after),
        Want::Endpoints(table) => diff(&expected(table), &after),
    };
    if problems != case.problems {
        errs.push(format!(
            "{problems} problem(s) reported, want {}",
            case.problems
        ));
    }
    if let Some(want) = case.local_ready {
        errs.extend(check_local_ready(case, &slices, &after, want));
    }
    errs
}

#[test]
fn endpoint_slices_merge_as_kube_proxy() {
    let failures: Vec<String> = CASES
        .iter()
        .flat_map(|case| {
            run(case)
                .into_iter()
                .map(move |e| format!("{} / {}: {e}", case.test, case.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failure(s) over {} cases:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

fn run_desired(case: &DesiredCase) -> Vec<String> {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "ns1", "name": "svc1"},
        "spec": {"clusterIP": "10.96.0.10", "ports": (case.service_ports)()},
    }))
    .expect("a valid Service");
    let mut objects = Objects::default();
    objects
        .services
        .insert(ObjectRef::new("ns1", "svc1"), Arc::new(svc));
    let mut slices = BTreeMap::new();
    for slice in (case.slices)() {
        apply(&mut slices, Event::Apply(slice));
    }
    objects.slices = shared(&slices);
    let node: NodeContext = NodeContext {
        name: "node-1".into(),
        nodeport_addrs: Vec::new(),
    };
    let out = desired(&objects, &node);
    let mut errs = Vec::new();
    if !out.problems.is_empty() {
        errs.push(format!("desired() problems: {:?}", out.problems));
    }
    let got: BTreeMap<(String, Protocol), Vec<String>> = out
        .sets
        .iter()
        .filter(|(key, _)| key.policy == Policy::Cluster)
        .map(|(key, set)| {
            let backends = set.backends.iter();
            let list = backends.map(|b| format!("{}:{}", b.ip, b.port)).collect();
            ((key.port_name.clone(), key.proto), list)
        })
        .collect();
    let want: BTreeMap<(String, Protocol), Vec<String>> = case
        .want
        .iter()
        .map(|(port, proto, list)| {
            let mut list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            list.sort();
            ((port.to_string(), *proto), list)
        })
        .collect();
    if got != want {
        errs.push(format!("backend sets: want {want:?}, got {got:?}"));
    }
    errs
}

#[test]
fn slice_ports_feed_service_ports_by_name_and_protocol() {
    let failures: Vec<String> = DESIRED_CASES
        .iter()
        .flat_map(|case| {
            run_desired(case)
                .into_iter()
                .map(move |e| format!("{}: {e}", case.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<(&str, &str)> = CASES.iter().map(|c| (c.test, c.name)).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), CASES.len());
}
