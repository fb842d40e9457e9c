//! Where the objects come from: the Kubernetes API (`kube`) or manifest files (`manifests`).
//! Both publish whole [`Objects`] snapshots on a watch channel, so bursts of changes coalesce:
//! the agent always reads the latest snapshot, never a backlog.
pub mod kube;
pub mod manifests;

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{ObjectRef, Objects, Problem};

/// What a source publishes: the objects, and what it could not read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub objects: Objects,
    pub problems: Vec<Problem>,
}

pub type Sender = tokio::sync::watch::Sender<Arc<Snapshot>>;
pub type Receiver = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// Publish `snap` unless it equals what the agent has: no wake-up, no resync for nothing.
pub fn publish_if_changed(tx: &Sender, snap: Snapshot) {
    tx.send_if_modified(|cur| {
        let differs = **cur != snap;
        if differs {
            *cur = Arc::new(snap);
        }
        differs
    });
}

/// One object lb cares about, shared: an unchanged object keeps its `Arc` from one snapshot to
/// the next, which is how the model tells what changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
    Node(Arc<Node>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Service(_) => "Service",
            Object::Slice(_) => "EndpointSlice",
            Object::Node(_) => "Node",
        }
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Service(s) => &s.metadata,
            Object::Slice(s) => &s.metadata,
            Object::Node(n) => &n.metadata,
        }
    }

    /// `namespace/name` ("default" when unset, as kubectl would apply it; nodes have none).
    pub fn key(&self) -> ObjectRef {
        let meta = self.meta();
        let namespace = match self {
            Object::Node(_) => "",
            _ => meta.namespace.as_deref().unwrap_or("default"),
        };
        ObjectRef::new(namespace, meta.name.as_deref().unwrap_or_default())
    }

    /// Add to a store, replacing an object of the same kind and name.
    pub fn insert_into(self, objects: &mut Objects) -> bool {
        let key = self.key();
        match self {
            Object::Service(s) => objects.services.insert(key, s).is_some(),
            Object::Slice(s) => objects.slices.insert(key, s).is_some(),
            Object::Node(n) => objects.nodes.insert(key.name.to_string(), n).is_some(),
        }
    }

    /// Remove the object of this kind and name from a store.
    pub fn remove_from(&self, objects: &mut Objects) {
        let key = self.key();
        match self {
            Object::Service(_) => drop(objects.services.remove(&key)),
            Object::Slice(_) => drop(objects.slices.remove(&key)),
            Object::Node(_) => drop(objects.nodes.remove(&*key.name)),
        }
    }
}
