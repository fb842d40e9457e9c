//! EndpointSlices → endpoints per service port, as kube-proxy's EndpointSliceCache merges them:
//! slices grouped by their kubernetes.io/service-name label, ports matched to Service ports by
//! (name, protocol), endpoints deduplicated on ip:port across slices (a local copy wins), only
//! the first address of an endpoint, slices of the model's family only (FQDN slices and the other
//! family's are not its: kube-proxy's per-family EndpointsChangeTracker skips them).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};

use super::{ignored, Family, ObjectRef, Problem, Protocol, LABEL_SERVICE_NAME};

/// A Service port as EndpointSlices name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub name: String,
    pub proto: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
    /// conditions.ready: nil or true.
    pub ready: bool,
    /// conditions.serving: nil or true.
    pub serving: bool,
    /// conditions.terminating: true only when set.
    pub terminating: bool,
    /// nodeName is this node.
    pub local: bool,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

pub type EndpointsByPort<A = Ipv4Addr> = BTreeMap<PortKey, Vec<Endpoint<A>>>;

/// A service's endpoints while slices merge: per port, deduplicated on ip:port.
type MergingPorts<A> = BTreeMap<PortKey, BTreeMap<(A, u16), Endpoint<A>>>;

/// The service a slice belongs to: its kubernetes.io/service-name label, in its namespace.
pub fn group_of(name: &ObjectRef, slice: &EndpointSlice) -> Option<ObjectRef> {
    let labels = slice.metadata.labels.as_ref()?;
    let service = labels.get(LABEL_SERVICE_NAME)?;
    Some(ObjectRef {
        namespace: name.namespace.clone(),
        name: service.as_str().into(),
    })
}

/// Merge one service's slices (in name order) into per-port endpoint lists (sorted by ip:port).
pub fn merge<'a, A: Family>(
    slices: impl IntoIterator<Item = (&'a ObjectRef, &'a EndpointSlice)>,
    node_name: &str,
    problems: &mut Vec<Problem>,
) -> EndpointsByPort<A> {
    let mut ports = MergingPorts::new();
    for (name, slice) in slices {
        if slice.address_type == A::NAME && !ignored(&slice.metadata.labels) {
            add_slice(&mut ports, name, slice, node_name, problems);
        }
    }
    ports
        .into_iter()
        .map(|(key, eps)| (key, eps.into_values().collect()))
        .collect()
}

fn add_slice<A: Family>(
    ports: &mut MergingPorts<A>,
    name: &ObjectRef,
    slice: &EndpointSlice,
    node_name: &str,
    problems: &mut Vec<Problem>,
) {
    let problem = |field: String, message: String| Problem {
        object: format!("EndpointSlice {name}"),
        field,
        message,
    };
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        // The API server defaults a missing name to "" and a missing protocol to TCP.
        let proto = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            // SCTP is valid Kubernetes but not proxied by lb (nor is it by its datapath).
            "SCTP" => continue,
            other => {
                let field = format!("ports[{i}].protocol");
                problems.push(problem(field, format!("unknown protocol {other:?}")));
                continue;
            }
        };
        let number = match port.port.map(u16::try_from) {
            Some(Ok(n)) if n != 0 => n,
            // kube-proxy ignores ports without a number (they would mean "all ports").
            None => continue,
            Some(_) => {
                let field = format!("ports[{i}].port");
                let message = format!("{} is not a port number", port.port.unwrap_or_default());
                problems.push(problem(field, message));
                continue;
            }
        };
        let key = PortKey {
            name: port.name.clone().unwrap_or_default(),
            proto,
        };
        let set = ports.entry(key).or_default();
        for (j, ep) in slice.endpoints.iter().flatten().enumerate() {
            let Some(addr) = ep.addresses.first() else {
                continue;
            };
            let Some(ip) = addr.parse().ok().and_then(A::of) else {
                let field = format!("endpoints[{j}].addresses[0]");
                let message = format!("{addr:?} is not an {} address", A::NAME);
                problems.push(problem(field, message));
                continue;
            };
            let endpoint = endpoint(ep, ip, number, node_name);
            let slot = (ip, number);
            // Duplicates across slices: keep the first, unless a later copy is local.
            if endpoint.local || !set.contains_key(&slot) {
                set.insert(slot, endpoint);
            }
        }
    }
}

fn endpoint<A>(ep: &SliceEndpoint, ip: A, port: u16, node_name: &str) -> Endpoint<A> {
    let cond = ep.conditions.clone().unwrap_or_default();
    let hints = ep.hints.clone().unwrap_or_default();
    Endpoint {
        ip,
        port,
        ready: cond.ready.unwrap_or(true),
        serving: cond.serving.unwrap_or(true),
        terminating: cond.terminating.unwrap_or(false),
        local: ep.node_name.as_deref() == Some(node_name),
        zone_hints: hints
            .for_zones
            .iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect(),
        node_hints: hints
            .for_nodes
            .iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect(),
    }
}
