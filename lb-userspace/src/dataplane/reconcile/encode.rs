//! The model in kernel terms: map keys and values from model types, and back.
use lb_common::{
    Service, ServiceName, BE_F_LOCAL, BE_F_TERMINATING, SVC_F_AFFINITY, SVC_F_EXT_LOCAL,
    SVC_F_INT_LOCAL, VERDICT_DROP, VERDICT_REJECT,
};

use super::family::KernelFamily;
use crate::model::{
    BackendSet, FrontendKey, Kind, ObjectRef, Policy, Protocol, Scope, SetKey, Verdict,
};

pub(super) fn backend_value<A: KernelFamily>(
    addr: (A::Addr, u16),
    b: &crate::model::Backend<A>,
) -> A::Backend {
    let mut flags = 0;
    if b.local {
        flags |= BE_F_LOCAL;
    }
    if b.terminating {
        flags |= BE_F_TERMINATING;
    }
    A::backend(addr.0, addr.1, flags)
}

/// A backend's address as the maps hold it (network byte order).
pub(super) fn kernel_addr<A: KernelFamily>(addr: &(A, u16)) -> (A::Addr, u16) {
    (addr.0.kernel(), addr.1.to_be())
}

/// A backend's address as the model holds it.
pub(super) fn model_addr<A: KernelFamily>(addr: (A::Addr, u16)) -> (A, u16) {
    (A::model(addr.0), u16::from_be(addr.1))
}

pub fn frontend_key<A: KernelFamily>(key: &FrontendKey<A>) -> A::FrontendKey {
    A::frontend_key(
        key.ip.kernel(),
        key.port.to_be(),
        key.proto.code(),
        key.scope.code(),
    )
}

pub(super) fn service_value<A>(set: &BackendSet<A>) -> Service {
    let mut flags = 0;
    if set.external_local {
        flags |= SVC_F_EXT_LOCAL;
    }
    if set.internal_local {
        flags |= SVC_F_INT_LOCAL;
    }
    if set.affinity_timeout.is_some() {
        flags |= SVC_F_AFFINITY;
    }
    Service {
        backend_count: 0,
        affinity_timeout: set.affinity_timeout.unwrap_or(0),
        flags,
        verdict: match set.verdict {
            Verdict::Reject => VERDICT_REJECT,
            Verdict::Drop => VERDICT_DROP,
        },
        _pad: [0; 2],
    }
}

/// The `LB_SVC_NAMES` value naming a set.
pub fn service_name_of(key: &SetKey) -> ServiceName {
    let mut out = ServiceName {
        proto: key.proto.code(),
        policy: key.policy.code(),
        ..Default::default()
    };
    copy_padded(&mut out.name, key.service.to_string().as_bytes());
    copy_padded(&mut out.port_name, key.port_name.as_bytes());
    out
}

/// The set a `LB_SVC_NAMES` value names.
pub fn set_key_of(name: &ServiceName) -> Option<SetKey> {
    let text = |b: &[u8]| {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8(b[..end].to_vec()).ok()
    };
    let full = text(&name.name)?;
    let (namespace, svc) = full.split_once('/')?;
    Some(SetKey {
        service: ObjectRef::new(namespace, svc),
        port_name: text(&name.port_name)?,
        proto: Protocol::from_code(name.proto)?,
        policy: Policy::from_code(name.policy)?,
    })
}

/// `src` at the start of the NUL-padded field `dst`, cut to fit.
pub(crate) fn copy_padded(dst: &mut [u8], src: &[u8]) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
}

/// A model enum's number in the maps (lb_common's constants), and back.
pub trait Code: Copy + PartialEq + 'static {
    /// Every value with its number.
    const CODES: &'static [(Self, u8)];

    fn code(self) -> u8 {
        let found = Self::CODES.iter().find(|(v, _)| *v == self);
        // Every value is listed (the test below checks each enum's list is whole).
        found.map_or(u8::MAX, |(_, n)| *n)
    }

    fn from_code(n: u8) -> Option<Self> {
        Self::CODES.iter().find(|(_, c)| *c == n).map(|(v, _)| *v)
    }
}

impl Code for Protocol {
    const CODES: &'static [(Self, u8)] = &[
        (Protocol::Tcp, lb_common::PROTO_TCP),
        (Protocol::Udp, lb_common::PROTO_UDP),
    ];
}

impl Code for Kind {
    const CODES: &'static [(Self, u8)] = &[
        (Kind::ClusterIp, lb_common::KIND_CLUSTER_IP),
        (Kind::NodePort, lb_common::KIND_NODE_PORT),
        (Kind::LoadBalancer, lb_common::KIND_LOAD_BALANCER),
        (Kind::ExternalIp, lb_common::KIND_EXTERNAL_IP),
    ];
}

impl Code for Scope {
    const CODES: &'static [(Self, u8)] = &[
        (Scope::External, lb_common::SCOPE_EXTERNAL),
        (Scope::Internal, lb_common::SCOPE_INTERNAL),
    ];
}

impl Code for Policy {
    const CODES: &'static [(Self, u8)] = &[
        (Policy::Cluster, lb_common::POLICY_CLUSTER),
        (Policy::Local, lb_common::POLICY_LOCAL),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each list round-trips and gives every value a number of its own.
    fn whole<T: Code + std::fmt::Debug>() {
        for (v, n) in T::CODES {
            assert_eq!((v.code(), T::from_code(*n)), (*n, Some(*v)), "{v:?}");
        }
        let numbers: std::collections::BTreeSet<u8> = T::CODES.iter().map(|c| c.1).collect();
        assert_eq!(numbers.len(), T::CODES.len());
    }

    #[test]
    fn every_model_value_has_its_own_kernel_number() {
        whole::<Protocol>();
        whole::<Kind>();
        whole::<Scope>();
        whole::<Policy>();
        assert_eq!(Protocol::from_code(0), None);
    }
}
