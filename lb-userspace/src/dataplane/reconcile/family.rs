//! Each IP family's map types: the reconciler is written once, over [`KernelFamily`].
//!
//! Only the frontends, backends, source ranges and session affinity are per family. Backend
//! sets (`LB_SERVICES`), their slots and names are shared, each family owning a range of ids
//! (`lb_common::ids`); the frontends of both families share the stats ids.
use std::{
    fmt::Debug,
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
};

use aya::{maps::lpm_trie::Key as LpmKey, Pod};
use lb_common::{
    Addr6, Affinity, Affinity6, AffinityKey4, AffinityKey6, Backend4, Backend6, Frontend4Key,
    Frontend6Key, SourceRange4, SourceRange6,
};

use crate::model::Family;

/// A source range as the maps hold it: the network address and its prefix length.
pub type KernelRange<A> = (<A as KernelFamily>::Addr, u8);

pub trait KernelFamily: Family {
    /// An address as the maps hold it (network byte order).
    type Addr: Copy + Ord + Hash + Debug + Default + Send + Sync;
    type FrontendKey: Pod + Default + Ord + Hash + Debug + Send + Sync;
    type Backend: Pod + Default + Eq + Debug + Send + Sync;
    type RangeKey: Pod;
    type AffinityKey: Pod + Ord + Debug;
    type Affinity: Pod + Debug;
    /// Set and backend ids of this family.
    const IDS: Range<u32>;
    /// The family's maps, by name (refusals name the map that is full).
    const FRONTENDS: &'static str;
    const BACKENDS: &'static str;
    const SOURCE_RANGES: &'static str;

    fn kernel(self) -> Self::Addr;
    fn model(addr: Self::Addr) -> Self;
    fn frontend_key(addr: Self::Addr, port: u16, proto: u8, scope: u8) -> Self::FrontendKey;
    /// (address, port, protocol, scope) of a frontend key.
    fn frontend_parts(key: &Self::FrontendKey) -> (Self::Addr, u16, u8, u8);
    fn backend(addr: Self::Addr, port: u16, flags: u8) -> Self::Backend;
    /// (address, port, flags) of a backend.
    fn backend_parts(b: &Self::Backend) -> (Self::Addr, u16, u8);
    /// The LPM key of a frontend's range: the stats id matched whole, then `len` bits.
    fn range_key(stats_id: u32, range: KernelRange<Self>) -> LpmKey<Self::RangeKey>;
    fn range_of(key: &LpmKey<Self::RangeKey>) -> (u32, KernelRange<Self>);
    /// (set id, backend id) of a session-affinity entry.
    fn affinity_pair(key: &Self::AffinityKey, value: &Self::Affinity) -> (u32, u32);
    /// Who a session-affinity entry is for.
    fn affinity_client(key: &Self::AffinityKey) -> AffinityClient;
    /// When the entry was last used (`bpf_ktime_get_coarse_ns`).
    fn affinity_used(value: &Self::Affinity) -> u64;
}

/// The client of a session-affinity entry: an address, or a network namespace (the IPv6 socket
/// hooks' entries for pods, `lb_common::AFFINITY_BY_NETNS`), by its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AffinityClient {
    Addr(IpAddr),
    Netns(u64),
}

/// The methods both families write alike (their key and value types differ, not their fields).
macro_rules! same_in_both_families {
    ($key:ident, $backend:ident, $range:ident, $affinity_key:ident, $affinity:ident) => {
        fn frontend_key(addr: Self::Addr, port: u16, proto: u8, scope: u8) -> $key {
            $key {
                addr,
                port,
                proto,
                scope,
            }
        }

        fn frontend_parts(k: &$key) -> (Self::Addr, u16, u8, u8) {
            (k.addr, k.port, k.proto, k.scope)
        }

        fn backend(addr: Self::Addr, port: u16, flags: u8) -> $backend {
            $backend {
                addr,
                port,
                flags,
                _pad: 0,
            }
        }

        fn backend_parts(b: &$backend) -> (Self::Addr, u16, u8) {
            (b.addr, b.port, b.flags)
        }

        fn range_key(stats_id: u32, (addr, len): KernelRange<Self>) -> LpmKey<$range> {
            LpmKey::new(32 + u32::from(len), $range { stats_id, addr })
        }

        fn range_of(key: &LpmKey<$range>) -> (u32, KernelRange<Self>) {
            let data = key.data();
            let len = key.prefix_len().saturating_sub(32) as u8;
            (data.stats_id, (data.addr, len))
        }

        fn affinity_pair(key: &$affinity_key, value: &$affinity) -> (u32, u32) {
            (key.service_id, value.backend_id)
        }

        fn affinity_used(value: &$affinity) -> u64 {
            value.last_used_ns
        }
    };
}

impl KernelFamily for Ipv4Addr {
    type Addr = u32;
    type FrontendKey = Frontend4Key;
    type Backend = Backend4;
    type RangeKey = SourceRange4;
    type AffinityKey = AffinityKey4;
    type Affinity = Affinity;
    const IDS: Range<u32> = lb_common::ids::IPV4;
    const FRONTENDS: &'static str = lb_common::map_names::FRONTENDS4;
    const BACKENDS: &'static str = lb_common::map_names::BACKENDS4;
    const SOURCE_RANGES: &'static str = lb_common::map_names::SOURCE_RANGES4;

    fn kernel(self) -> u32 {
        u32::from_ne_bytes(self.octets())
    }

    fn model(addr: u32) -> Self {
        Ipv4Addr::from(addr.to_ne_bytes())
    }

    fn affinity_client(key: &AffinityKey4) -> AffinityClient {
        AffinityClient::Addr(Self::model(key.client).into())
    }

    same_in_both_families!(Frontend4Key, Backend4, SourceRange4, AffinityKey4, Affinity);
}

impl KernelFamily for Ipv6Addr {
    type Addr = Addr6;
    type FrontendKey = Frontend6Key;
    type Backend = Backend6;
    type RangeKey = SourceRange6;
    type AffinityKey = AffinityKey6;
    type Affinity = Affinity6;
    const IDS: Range<u32> = lb_common::ids::IPV6;
    const FRONTENDS: &'static str = lb_common::map_names::FRONTENDS6;
    const BACKENDS: &'static str = lb_common::map_names::BACKENDS6;
    const SOURCE_RANGES: &'static str = lb_common::map_names::SOURCE_RANGES6;

    fn kernel(self) -> Addr6 {
        let o = self.octets();
        let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
        [word(0), word(4), word(8), word(12)]
    }

    fn model(addr: Addr6) -> Self {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Ipv6Addr::from(octets)
    }

    fn affinity_client(key: &AffinityKey6) -> AffinityClient {
        match key.by {
            lb_common::AFFINITY_BY_NETNS => {
                AffinityClient::Netns(u64::from(key.client[0]) | u64::from(key.client[1]) << 32)
            }
            _ => AffinityClient::Addr(Self::model(key.client).into()),
        }
    }

    same_in_both_families!(
        Frontend6Key,
        Backend6,
        SourceRange6,
        AffinityKey6,
        Affinity6
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address goes into the maps as the packet holds it, and comes back unchanged.
    #[test]
    fn addresses_are_held_in_network_byte_order() {
        let v4: Ipv4Addr = "10.96.0.1".parse().unwrap();
        assert_eq!(v4.kernel().to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(Ipv4Addr::model(v4.kernel()), v4);
        let v6: Ipv6Addr = "fd00:10:96::1".parse().unwrap();
        let words = v6.kernel();
        assert_eq!(words[0].to_ne_bytes(), [0xfd, 0x00, 0x00, 0x10]);
        assert_eq!(words[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(Ipv6Addr::model(words), v6);
    }

    #[test]
    fn range_keys_round_trip() {
        let v6: Ipv6Addr = "2001:db8::".parse().unwrap();
        let key = Ipv6Addr::range_key(7, (v6.kernel(), 32));
        assert_eq!(key.prefix_len(), 64);
        assert_eq!(Ipv6Addr::range_of(&key), (7, (v6.kernel(), 32)));
    }
}
