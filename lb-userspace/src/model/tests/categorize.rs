//! kube-proxy's TestCategorizeEndpoints (pkg/proxy/topology_test.go), case by case.
//!
//! Source: the newest upstream revision of the table in the reference store
//! (kubernetes/kubernetes 6c039d9075ef18d200bb0ba7dbdb362f4d0deef0, 26 cases, all ported below in
//! upstream order). That revision predates node hints (PreferSameNode) and the later
//! "externalTrafficPolicy: Local, externally accessible" cases; those come from the same table as
//! antrea-io/antrea carries it over (pkg/agent/proxy/topology_test.go, same case names) and are
//! marked below.
//!
//! How a Go case maps here:
//! - `serviceInfo` (a BaseServicePortInfo with internalPolicyLocal, externalPolicyLocal, nodePort)
//!   becomes [`SvcPort`]; [`kube_proxy_policy`] turns it into [`PortPolicy`] with kube-proxy's
//!   UsesClusterEndpoints / UsesLocalEndpoints (pkg/proxy/serviceport.go), and every case also
//!   checks that lb's own `ServiceSpec::port_policy` agrees for the same settings.
//! - Endpoint fields left out of a Go literal are false (ready, serving, terminating, isLocal),
//!   and so are they here (`..EP`).
//! - nodeLabels: only topology.kubernetes.io/zone matters; a missing label is the empty zone.
//! - Expectations follow the Go runner: `None` ("nil") for cluster/local demands that the model
//!   returns `None`; `Some(list)` accepts `None` or that exact list (checkExpectedEndpoints treats a
//!   nil actual like an empty one). allEndpoints defaults to whichever of cluster/local is the only
//!   one set, and hasAnyEndpoints must equal "allEndpoints non-empty || onlyRemoteEndpoints".
//!   Lists are compared as multisets of "ip:port" (a duplicate is a failure, as upstream).
//!
//! Skipped, and why:
//! - Upstream's older revision of the table (kubernetes/kubernetes 02756999) also ran cases with
//!   feature gates off and a hints annotation. lb behaves as with the gates on (they are GA):
//!   - "Cluster traffic policy, PTE disabled, all endpoints are terminating",
//!     "iTP: Local, eTP: Local, PTE disabled, all endpoints remote and terminating",
//!     "iTP: Cluster, eTP: Local, PTE disabled, with terminating endpoints": need
//!     ProxyTerminatingEndpoints off, which no longer exists (GA in 1.28, gate removed). Their
//!     "PTE enabled" twins are ported under their current names.
//!   - "hints, hints annotation == disabled, hints ignored", "hints, hints annotation == aUto
//!     (wrong capitalization), hints ignored", "hints, hints annotation empty, hints ignored",
//!     "hintsAnnotation empty, no filtering applied", "hintsAnnotation disabled, no filtering
//!     applied": kube-proxy no longer reads the topology annotation (it follows the hints alone;
//!     whether hints are published is the EndpointSlice controller's business), so the cases have
//!     no counterpart in the model. "hints enabled, hints annotation == auto", "normal endpoint
//!     filtering, auto annotation" and "... Auto annotation" are the first case below, renamed.
//! - "PreferSameNode falls back to same-zone when feature gate disabled": needs
//!   PreferSameTrafficDistribution off; with it on, its data is "PreferSameNode available".
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::{
    categorize_endpoints, Endpoint, ObjectRef, PortPolicy, Protocol, ServicePortSpec, ServiceSpec,
};

/// A BaseServicePortInfo, reduced to the fields CategorizeEndpoints looks at.
#[derive(Clone, Copy, Debug)]
struct SvcPort {
    internal_policy_local: bool,
    external_policy_local: bool,
    /// 0: none.
    node_port: u16,
}

const PORT: SvcPort = SvcPort {
    internal_policy_local: false,
    external_policy_local: false,
    node_port: 0,
};

/// A BaseEndpointInfo.
#[derive(Clone, Copy, Debug)]
struct Ep {
    endpoint: &'static str,
    zone_hints: &'static [&'static str],
    node_hints: &'static [&'static str],
    ready: bool,
    serving: bool,
    terminating: bool,
    is_local: bool,
}

const EP: Ep = Ep {
    endpoint: "",
    zone_hints: &[],
    node_hints: &[],
    ready: false,
    serving: false,
    terminating: false,
    is_local: false,
};

struct Case {
    name: &'static str,
    /// This node (only node hints look at it).
    node_name: &'static str,
    /// The node's topology.kubernetes.io/zone label ("" when missing).
    zone: &'static str,
    port: SvcPort,
    endpoints: &'static [Ep],
    cluster: Option<&'static [&'static str]>,
    local: Option<&'static [&'static str]>,
    all: Option<&'static [&'static str]>,
    only_remote: bool,
}

const CASE: Case = Case {
    name: "",
    node_name: "",
    zone: "",
    port: PORT,
    endpoints: &[],
    cluster: None,
    local: None,
    all: None,
    only_remote: false,
};

#[rustfmt::skip]
static CASES: &[Case] = &[
    Case {
        name: "should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone",
        zone: "zone-a",
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-c"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], ready: true, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
        zone: "zone-a",
        port: SvcPort { external_policy_local: true, node_port: 8080, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b"], ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-c"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], ready: true, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
        local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
        all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
        zone: "zone-a",
        port: SvcPort {
            internal_policy_local: true,
            external_policy_local: false,
            node_port: 8080,
        },
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b"], ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-c"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], ready: true, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
        local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
        all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        ..CASE
    },
    Case {
        name: "empty node labels",
        zone: "",
        endpoints: &[Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: true, ..EP }],
        cluster: Some(&["10.1.2.3:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "empty zone label",
        zone: "",
        endpoints: &[Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: true, ..EP }],
        cluster: Some(&["10.1.2.3:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "node in different zone, no endpoint filtering",
        zone: "zone-b",
        endpoints: &[Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: true, ..EP }],
        cluster: Some(&["10.1.2.3:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "unready endpoint",
        zone: "zone-a",
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-c"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], ready: false, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "only unready endpoints in same zone (should not filter)",
        zone: "zone-a",
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: false, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-c"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], ready: false, ..EP },
        ],
        cluster: Some(&["10.1.2.4:80", "10.1.2.5:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "missing hints, no filtering applied",
        zone: "zone-a",
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &[], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], ready: true, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
        zone: "zone-c",
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a", "zone-b", "zone-c"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b", "zone-c"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-b", "zone-d"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-c"], ready: true, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "conflicting topology and localness require merging allEndpoints",
        zone: "zone-a",
        port: SvcPort {
            internal_policy_local: false,
            external_policy_local: true,
            node_port: 8080,
        },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", zone_hints: &["zone-a"], ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", zone_hints: &["zone-b"], ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.2:80", zone_hints: &["zone-a"], ready: true, is_local: false, ..EP },
            Ep { endpoint: "10.0.0.3:80", zone_hints: &["zone-b"], ready: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
        local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, with empty endpoints",
        port: SvcPort { internal_policy_local: true, ..PORT },
        endpoints: &[],
        cluster: None,
        local: Some(&[]),
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, but all endpoints are remote",
        port: SvcPort { internal_policy_local: true, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: false, ..EP },
        ],
        cluster: None,
        local: Some(&[]),
        only_remote: true,
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, all endpoints are local",
        port: SvcPort { internal_policy_local: true, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: true, ..EP },
        ],
        cluster: None,
        local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "internalTrafficPolicy: Local, some endpoints are local",
        port: SvcPort { internal_policy_local: true, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: false, ..EP },
        ],
        cluster: None,
        local: Some(&["10.0.0.0:80"]),
        ..CASE
    },
    Case {
        name: "Cluster traffic policy, endpoints not Ready",
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: false, ..EP },
        ],
        cluster: Some(&[]),
        local: None,
        ..CASE
    },
    Case {
        name: "Cluster traffic policy, some endpoints are Ready",
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, ..EP },
        ],
        cluster: Some(&["10.0.0.1:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "Cluster traffic policy, all endpoints are terminating",
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: false, serving: true, terminating: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: false, serving: true, terminating: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "iTP: Local, eTP: Cluster, some endpoints local",
        port: SvcPort {
            internal_policy_local: true,
            external_policy_local: false,
            node_port: 8080,
        },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Cluster, eTP: Local, some endpoints local",
        port: SvcPort {
            internal_policy_local: false,
            external_policy_local: true,
            node_port: 8080,
        },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Local, eTP: Local, some endpoints local",
        port: SvcPort {
            internal_policy_local: true,
            external_policy_local: true,
            node_port: 8080,
        },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Local, eTP: Local, all endpoints remote",
        port: SvcPort {
            internal_policy_local: true,
            external_policy_local: true,
            node_port: 8080,
        },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&[]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
        port: SvcPort {
            internal_policy_local: true,
            external_policy_local: true,
            node_port: 8080,
        },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: false, serving: true, terminating: true, is_local: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: false, serving: true, terminating: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&[]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        only_remote: true,
        ..CASE
    },
    Case {
        name: "iTP: Cluster, eTP: Local, with terminating endpoints",
        port: SvcPort {
            internal_policy_local: false,
            external_policy_local: true,
            node_port: 8080,
        },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: false, serving: false, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.2:80", ready: false, serving: true, terminating: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.3:80", ready: false, serving: true, terminating: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80"]),
        local: Some(&["10.0.0.2:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
        ..CASE
    },
    Case {
        name: "externalTrafficPolicy ignored if not externally accessible",
        port: SvcPort { external_policy_local: true, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: true, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: None,
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "no cluster endpoints for iTP:Local internal-only service",
        port: SvcPort { internal_policy_local: true, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: true, ..EP },
        ],
        cluster: None,
        local: Some(&["10.0.0.1:80"]),
        all: Some(&["10.0.0.1:80"]),
        ..CASE
    },
    // Newer upstream cases (node hints with PreferSameTrafficDistribution on, and eTP=Local on an
    // externally accessible service), as antrea-io/antrea's copy of the table names them.
    Case {
        name: "PreferSameNode available",
        node_name: "node-1",
        zone: "zone-a",
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], node_hints: &["node-1"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b"], node_hints: &["node-2"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-c"], node_hints: &["node-3"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], node_hints: &["node-4"], ready: true, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "PreferSameNode ignored if some endpoints unhinted",
        node_name: "node-1",
        zone: "zone-a",
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], node_hints: &["node-1"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", ready: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-c"], node_hints: &["node-3"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], node_hints: &["node-4"], ready: true, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "PreferSameNode falls back to PreferSameZone if no endpoint for node",
        node_name: "node-0",
        zone: "zone-a",
        endpoints: &[
            Ep { endpoint: "10.1.2.3:80", zone_hints: &["zone-a"], node_hints: &["node-1"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.4:80", zone_hints: &["zone-b"], node_hints: &["node-2"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.5:80", zone_hints: &["zone-c"], node_hints: &["node-3"], ready: true, ..EP },
            Ep { endpoint: "10.1.2.6:80", zone_hints: &["zone-a"], node_hints: &["node-4"], ready: true, ..EP },
        ],
        cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
        local: None,
        ..CASE
    },
    Case {
        name: "externalTrafficPolicy: Local, externally accessible, with empty endpoints",
        port: SvcPort { external_policy_local: true, node_port: 8080, ..PORT },
        endpoints: &[],
        cluster: Some(&[]),
        local: Some(&[]),
        ..CASE
    },
    Case {
        name: "externalTrafficPolicy: Local, externally accessible, but all endpoints are remote",
        port: SvcPort { external_policy_local: true, node_port: 8080, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: false, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&[]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "externalTrafficPolicy: Local, externally accessible, all endpoints are local",
        port: SvcPort { external_policy_local: true, node_port: 8080, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: true, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
    Case {
        name: "externalTrafficPolicy: Local, externally accessible, some endpoints are local",
        port: SvcPort { external_policy_local: true, node_port: 8080, ..PORT },
        endpoints: &[
            Ep { endpoint: "10.0.0.0:80", ready: true, is_local: true, ..EP },
            Ep { endpoint: "10.0.0.1:80", ready: true, is_local: false, ..EP },
        ],
        cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        local: Some(&["10.0.0.0:80"]),
        all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
        ..CASE
    },
];

/// kube-proxy's BaseServicePortInfo.UsesClusterEndpoints / UsesLocalEndpoints: cluster endpoints
/// for iTP=Cluster or whenever the port is reachable from outside (pod-to-external traffic
/// short-circuits to them even under eTP=Local); local endpoints for iTP=Local, or eTP=Local on
/// an externally reachable port.
fn kube_proxy_policy(port: &SvcPort) -> PortPolicy {
    let externally_accessible = port.node_port != 0;
    PortPolicy {
        uses_cluster: !port.internal_policy_local || externally_accessible,
        uses_local: port.internal_policy_local
            || (port.external_policy_local && externally_accessible),
    }
}

/// The same port settings as lb's own parsed Service.
fn service_spec(port: &SvcPort) -> ServiceSpec {
    ServiceSpec {
        name: ObjectRef::new("ns1", "svc1"),
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 1)],
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        source_ranges: Vec::new(),
        ports: vec![ServicePortSpec {
            name: String::new(),
            proto: Protocol::Tcp,
            port: 80,
            node_port: (port.node_port != 0).then_some(port.node_port),
        }],
        external_local: port.external_policy_local,
        internal_local: port.internal_policy_local,
        affinity_timeout: None,
        health_check_node_port: None,
        warnings: Vec::new(),
    }
}

fn endpoint(ep: &Ep) -> Endpoint {
    let addr: SocketAddrV4 = ep.endpoint.parse().expect("ip:port");
    Endpoint {
        ip: *addr.ip(),
        port: addr.port(),
        ready: ep.ready,
        serving: ep.serving,
        terminating: ep.terminating,
        local: ep.is_local,
        zone_hints: ep.zone_hints.iter().map(|z| z.to_string()).collect(),
        node_hints: ep.node_hints.iter().map(|n| n.to_string()).collect(),
    }
}

/// Sorted "ip:port" strings, duplicates kept.
fn names(eps: &[Endpoint]) -> Vec<String> {
    let mut out: Vec<String> = eps.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect();
    out.sort();
    out
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// The Go runner's check for clusterEndpoints and localEndpoints.
fn check_list(
    what: &str,
    want: Option<&[&str]>,
    got: &Option<Vec<Endpoint>>,
    errs: &mut Vec<String>,
) {
    if let (None, Some(got)) = (want, got) {
        errs.push(format!(
            "expected no {what} endpoints but got {:?}",
            names(got)
        ));
        return;
    }
    let want = sorted(want.unwrap_or_default());
    let got = names(got.as_deref().unwrap_or_default());
    if want != got {
        errs.push(format!("{what} endpoints: want {want:?}, got {got:?}"));
    }
}

fn check(case: &Case) -> Vec<String> {
    let mut errs = Vec::new();
    let policy = kube_proxy_policy(&case.port);
    let lb_policy = service_spec(&case.port).port_policy();
    if lb_policy != policy {
        errs.push(format!(
            "ServiceSpec::port_policy() is {lb_policy:?}, kube-proxy's is {policy:?}"
        ));
    }
    let endpoints: Vec<Endpoint> = case.endpoints.iter().map(endpoint).collect();
    let got = categorize_endpoints(&endpoints, &policy, case.node_name, case.zone);
    check_list("cluster", case.cluster, &got.cluster, &mut errs);
    check_list("local", case.local, &got.local, &mut errs);
    let want_all = match (case.cluster, case.local) {
        (Some(cluster), None) => Some(cluster),
        (None, Some(local)) => Some(local),
        _ => case.all,
    };
    let want_all = sorted(want_all.unwrap_or_default());
    let got_all = names(got.all_reachable.as_deref().unwrap_or_default());
    if want_all != got_all {
        errs.push(format!("allEndpoints: want {want_all:?}, got {got_all:?}"));
    }
    let want_any = !want_all.is_empty() || case.only_remote;
    if got.has_any_endpoints != want_any {
        errs.push(format!(
            "expected hasAnyEndpoints={want_any}, got {}",
            got.has_any_endpoints
        ));
    }
    errs
}

#[test]
fn categorize_endpoints_as_kube_proxy() {
    let failures = super::table_failures(CASES, |c| c.name, check);
    assert!(
        failures.is_empty(),
        "TestCategorizeEndpoints: {} failure(s) over {} cases:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn case_names_are_unique() {
    super::assert_unique_names(CASES.iter().map(|c| c.name));
}
