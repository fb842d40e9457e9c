//! Typed access to lb's kernel maps, for the agent (writes) and lbctl (reads). The maps the
//! reconciler owns are written through `reconcile::ServiceMaps`, whose module `write` holds the
//! order of the writes.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use aya::{
    maps::{
        lpm_trie::LpmTrie, Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
    },
    Ebpf, Pod,
};
use lb_common::{
    map_names as names, stat, Addr6, Config, Counters, Ct4, Frontend4, IfaceInfo, NodeAddr4,
    RevNat4, Service, ServiceName, SlotKey, SockConfig, SockConfig6, Tuple4,
};

use super::pins::PinLayout;
use super::reconcile::{KernelFamily, KernelRange};

pub struct Maps {
    /// The IPv4 frontends, backends, ranges and affinity.
    pub v4: FamilyMaps<Ipv4Addr>,
    /// The IPv6 ones: None in the pins of an agent older than them (lbctl reads those too).
    pub v6: Option<FamilyMaps<Ipv6Addr>>,
    pub services: HashMap<MapData, u32, Service>,
    pub slots: HashMap<MapData, SlotKey, u32>,
    /// TCP flows.
    pub tcp_flows: FlowTable,
    /// Flows of every other protocol (UDP): a table of their own (`LB4_CT_ANY`).
    pub other_flows: FlowTable,
    pub node_addrs: HashMap<MapData, u32, NodeAddr4>,
    pub config: Array<MapData, Config>,
    pub frontend_stats: PerCpuArray<MapData, Counters>,
    pub global_stats: PerCpuArray<MapData, u64>,
    pub service_names: HashMap<MapData, u32, ServiceName>,
    pub ifaces: HashMap<MapData, u32, IfaceInfo>,
    pub xmit_drops: PerCpuHashMap<MapData, u32, u64>,
    pub sock_config: Array<MapData, SockConfig>,
    pub sock_stats: PerCpuArray<MapData, u64>,
    pub host_addrs: HashMap<MapData, u32, u8>,
    /// The node's own IPv6 addresses, and the IPv6 socket hooks' settings: None in the pins of
    /// an agent older than them, as `v6`.
    pub host_addrs6: Option<HashMap<MapData, Addr6, u8>>,
    pub sock_config6: Option<Array<MapData, SockConfig6>>,
    /// New flows the source ranges dropped, by frontend stats id. Optional so that lbctl still
    /// reads the pins of an agent older than them.
    pub source_range_drops: Option<PerCpuArray<MapData, u64>>,
}

/// One family's own maps (the backend sets, slots, names and counters are shared).
pub struct FamilyMaps<A: KernelFamily> {
    pub frontends: HashMap<MapData, A::FrontendKey, Frontend4>,
    pub backends: HashMap<MapData, u32, A::Backend>,
    pub affinity: HashMap<MapData, A::AffinityKey, A::Affinity>,
    /// loadBalancerSourceRanges by frontend stats id. Optional so that lbctl still reads the
    /// pins of an agent older than them.
    pub source_ranges: Option<LpmTrie<MapData, A::RangeKey, u8>>,
}

/// [`Maps`]' part for family `A`.
pub trait FamilyOf<A: KernelFamily> {
    fn family(&self) -> Option<&FamilyMaps<A>>;
    fn family_mut(&mut self) -> Result<&mut FamilyMaps<A>>;
}

impl FamilyOf<Ipv4Addr> for Maps {
    fn family(&self) -> Option<&FamilyMaps<Ipv4Addr>> {
        Some(&self.v4)
    }

    fn family_mut(&mut self) -> Result<&mut FamilyMaps<Ipv4Addr>> {
        Ok(&mut self.v4)
    }
}

impl FamilyOf<Ipv6Addr> for Maps {
    fn family(&self) -> Option<&FamilyMaps<Ipv6Addr>> {
        self.v6.as_ref()
    }

    fn family_mut(&mut self) -> Result<&mut FamilyMaps<Ipv6Addr>> {
        self.v6
            .as_mut()
            .with_context(|| format!("map {} missing", names::FRONTENDS6))
    }
}

/// One conntrack table: client-direction flows and their reply entries (also the SNAT ports).
pub struct FlowTable {
    pub ct: HashMap<MapData, Tuple4, Ct4>,
    pub rnat: HashMap<MapData, Tuple4, RevNat4>,
}

/// The sizes of the maps the agent fills, as created (a pinned map keeps the size it was made
/// with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub frontends: u32,
    pub services: u32,
    pub slots: u32,
    pub backends: u32,
    /// The TCP conntrack table (LRU: when full, the least recently used flow makes room).
    pub ct: u32,
    /// The conntrack table of other protocols (UDP).
    pub ct_any: u32,
}

impl Capacities {
    pub fn read(layout: &PinLayout) -> Result<Self> {
        let size = |name: &str| -> Result<u32> {
            let info = aya::maps::MapInfo::from_pin(layout.map(name))
                .with_context(|| format!("map {name}"))?;
            Ok(info.max_entries())
        };
        Ok(Capacities {
            frontends: size(names::FRONTENDS4)?,
            services: size(names::SERVICES)?,
            slots: size(names::SLOTS)?,
            backends: size(names::BACKENDS4)?,
            ct: size(names::CT4)?,
            ct_any: size(names::CT_ANY4)?,
        })
    }
}

/// Where the maps come from: a freshly loaded object, or the pins of a running (or stopped) agent.
trait Source {
    fn map(&mut self, name: &str) -> Result<Map>;
}

impl Source for Ebpf {
    fn map(&mut self, name: &str) -> Result<Map> {
        self.take_map(name)
            .with_context(|| format!("map {name} missing from the object"))
    }
}

impl Source for PinLayout {
    fn map(&mut self, name: &str) -> Result<Map> {
        let path = PinLayout::map(self, name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Map::from_map_data(data)?)
    }
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    src: &mut impl Source,
    name: &str,
) -> Result<T> {
    T::try_from(src.map(name)?).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    /// Take the maps out of a loaded object (the loader already adopted or created the pins).
    pub fn from_loaded(ebpf: &mut Ebpf) -> Result<Self> {
        Self::from_source(ebpf)
    }

    /// Open the pinned maps of an agent, running or not.
    pub fn open_pinned(layout: &PinLayout) -> Result<Self> {
        Self::from_source(&mut layout.clone())
    }

    fn from_source(src: &mut impl Source) -> Result<Self> {
        Ok(Maps {
            v4: FamilyMaps {
                frontends: typed(src, names::FRONTENDS4)?,
                backends: typed(src, names::BACKENDS4)?,
                affinity: typed(src, names::AFFINITY4)?,
                source_ranges: typed(src, names::SOURCE_RANGES4).ok(),
            },
            v6: family6(src).ok(),
            services: typed(src, names::SERVICES)?,
            slots: typed(src, names::SLOTS)?,
            tcp_flows: FlowTable {
                ct: typed(src, names::CT4)?,
                rnat: typed(src, names::RNAT4)?,
            },
            other_flows: FlowTable {
                ct: typed(src, names::CT_ANY4)?,
                rnat: typed(src, names::RNAT_ANY4)?,
            },
            node_addrs: typed(src, names::NODE_ADDRS4)?,
            config: typed(src, names::CONFIG)?,
            frontend_stats: typed(src, names::FRONTEND_STATS)?,
            global_stats: typed(src, names::GLOBAL_STATS)?,
            service_names: typed(src, names::SERVICE_NAMES)?,
            ifaces: typed(src, names::IFACES)?,
            xmit_drops: typed(src, names::XMIT_DROPS)?,
            sock_config: typed(src, names::SOCK_CONFIG)?,
            sock_stats: typed(src, names::SOCK_STATS)?,
            host_addrs: typed(src, names::HOST_ADDRS4)?,
            host_addrs6: typed(src, names::HOST_ADDRS6).ok(),
            sock_config6: typed(src, names::SOCK_CONFIG6).ok(),
            source_range_drops: typed(src, names::SOURCE_RANGE_DROPS).ok(),
        })
    }

    /// The conntrack table of protocol `proto`, as the datapath chooses it.
    pub fn flows(&mut self, proto: u8) -> &mut FlowTable {
        if proto == lb_common::PROTO_TCP {
            &mut self.tcp_flows
        } else {
            &mut self.other_flows
        }
    }

    /// Both conntrack tables.
    pub fn flow_tables(&self) -> [&FlowTable; 2] {
        [&self.tcp_flows, &self.other_flows]
    }

    pub fn config(&self) -> Result<Config> {
        Ok(self.config.get(&0, 0)?)
    }

    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        Ok(self.config.set(0, config, 0)?)
    }

    pub fn set_node_addr(&mut self, ifindex: u32, addr: std::net::Ipv4Addr) -> Result<()> {
        let value = NodeAddr4 {
            addr: u32::from_ne_bytes(addr.octets()),
        };
        self.node_addrs
            .insert(ifindex, value, 0)
            .with_context(|| format!("node address {addr} on ifindex {ifindex}"))
    }

    pub fn remove_node_addr(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.node_addrs.remove(&ifindex))
    }

    pub fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<()> {
        self.ifaces
            .insert(ifindex, info, 0)
            .with_context(|| format!("interface record of ifindex {ifindex}"))
    }

    pub fn iface(&self, ifindex: u32) -> Option<IfaceInfo> {
        self.ifaces.get(&ifindex, 0).ok()
    }

    /// Forget an interface's record and its transmit-drop counter.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        ignore_missing(self.xmit_drops.remove(&ifindex))?;
        ignore_missing(self.ifaces.remove(&ifindex))
    }

    /// Start counting the transmit drops of an external XDP interface (a counter already there,
    /// from the previous agent, keeps its count).
    pub fn count_xmit_drops(&mut self, ifindex: u32) -> Result<()> {
        if self.xmit_drops.get(&ifindex, 0).is_ok() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zero = PerCpuValues::try_from(vec![0u64; cpus])?;
        self.xmit_drops
            .insert(ifindex, zero, 0)
            .with_context(|| format!("transmit-drop counter of ifindex {ifindex}"))
    }

    /// Frames lb transmitted on this interface that the kernel dropped, summed over CPUs (None:
    /// not counted, e.g. without XDP).
    pub fn xmit_drops(&self, ifindex: u32) -> Option<u64> {
        Some(self.xmit_drops.get(&ifindex, 0).ok()?.iter().sum())
    }

    /// New flows a frontend's source ranges dropped, summed over CPUs.
    pub fn source_range_drops(&self, stats_id: u32) -> Result<u64> {
        match &self.source_range_drops {
            Some(map) => Ok(map.get(&stats_id, 0)?.iter().sum()),
            None => Ok(0),
        }
    }

    /// The socket hooks' settings (all zero: never configured, i.e. off).
    pub fn sock_config(&self) -> Result<SockConfig> {
        Ok(self.sock_config.get(&0, 0)?)
    }

    pub fn set_sock_config(&mut self, config: &SockConfig) -> Result<()> {
        Ok(self.sock_config.set(0, config, 0)?)
    }

    /// connect()/sendmsg() calls the socket hooks translated for one frontend, summed over CPUs.
    pub fn socket_translations(&self, stats_id: u32) -> Result<u64> {
        Ok(self.sock_stats.get(&stats_id, 0)?.iter().sum())
    }

    /// Make `LB4_HOST_ADDRS` hold exactly `addrs` (the node's own IPv4 addresses).
    pub fn set_host_addrs(&mut self, addrs: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let keys = addrs.iter().map(|a| a.kernel()).collect();
        hold_exactly(&mut self.host_addrs, &keys, names::HOST_ADDRS4)
    }

    /// The same for `LB6_HOST_ADDRS` (an older agent's pins have none: nothing to keep).
    pub fn set_host_addrs6(&mut self, addrs: &BTreeSet<Ipv6Addr>) -> Result<()> {
        let Some(map) = &mut self.host_addrs6 else {
            return Ok(());
        };
        let keys = addrs.iter().map(|a| a.kernel()).collect();
        hold_exactly(map, &keys, names::HOST_ADDRS6)
    }

    /// The IPv6 socket hooks' settings (None: the pins have no such map).
    pub fn sock_config6(&self) -> Option<SockConfig6> {
        self.sock_config6.as_ref()?.get(&0, 0).ok()
    }

    pub fn set_sock_config6(&mut self, config: &SockConfig6) -> Result<()> {
        let map = self
            .sock_config6
            .as_mut()
            .with_context(|| format!("map {} missing", names::SOCK_CONFIG6))?;
        Ok(map.set(0, config, 0)?)
    }

    /// Summed per-CPU counters of one frontend.
    pub fn frontend_counters(&self, stats_id: u32) -> Result<Counters> {
        let per_cpu = self.frontend_stats.get(&stats_id, 0)?;
        Ok(per_cpu.iter().fold(Counters::default(), |acc, c| Counters {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }))
    }

    /// Summed per-CPU global counters, by name.
    pub fn global_counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        (0..stat::COUNT)
            .map(|i| {
                Ok((
                    stat::NAMES[i as usize],
                    self.global_stats.get(&i, 0)?.iter().sum(),
                ))
            })
            .collect()
    }
}

/// Make a set-like map (value unused) hold exactly `want`.
fn hold_exactly<K: Pod + Ord + std::fmt::Debug>(
    map: &mut HashMap<MapData, K, u8>,
    want: &BTreeSet<K>,
    name: &str,
) -> Result<()> {
    let held: BTreeSet<K> = map.keys().filter_map(|k| k.ok()).collect();
    for key in held.difference(want) {
        ignore_missing(map.remove(key))?;
    }
    for key in want.difference(&held) {
        map.insert(key, 1, 0)
            .with_context(|| format!("{name} {key:?}"))?;
    }
    Ok(())
}

fn family6(src: &mut impl Source) -> Result<FamilyMaps<Ipv6Addr>> {
    Ok(FamilyMaps {
        frontends: typed(src, names::FRONTENDS6)?,
        backends: typed(src, names::BACKENDS6)?,
        affinity: typed(src, names::AFFINITY6)?,
        source_ranges: Some(typed(src, names::SOURCE_RANGES6)?),
    })
}

impl<A: KernelFamily> FamilyMaps<A> {
    fn source_ranges_mut(&mut self) -> Result<&mut LpmTrie<MapData, A::RangeKey, u8>> {
        self.source_ranges
            .as_mut()
            .with_context(|| format!("map {} missing", A::SOURCE_RANGES))
    }

    pub(super) fn set_source_range(&mut self, stats_id: u32, range: KernelRange<A>) -> Result<()> {
        let key = A::range_key(stats_id, range);
        self.source_ranges_mut()?
            .insert(&key, 1, 0)
            .with_context(|| format!("source range {range:?} of frontend {stats_id}"))
    }

    pub(super) fn remove_source_range(
        &mut self,
        stats_id: u32,
        range: KernelRange<A>,
    ) -> Result<()> {
        let key = A::range_key(stats_id, range);
        ignore_missing(self.source_ranges_mut()?.remove(&key))
    }

    /// Every frontend's source ranges, by stats id (sorted); none without the map.
    pub(super) fn read_source_ranges(&self) -> Result<BTreeMap<u32, Vec<KernelRange<A>>>> {
        let mut out: BTreeMap<u32, Vec<KernelRange<A>>> = BTreeMap::new();
        let Some(map) = &self.source_ranges else {
            return Ok(out);
        };
        for key in map.keys() {
            let (stats_id, range) = A::range_of(&key?);
            out.entry(stats_id).or_default().push(range);
        }
        for ranges in out.values_mut() {
            ranges.sort_unstable();
        }
        Ok(out)
    }
}

/// Every entry of a hash map (a snapshot: entries may come and go meanwhile).
pub fn entries<K: Pod + Ord, V: Pod>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>> {
    let mut all = map.iter().collect::<Result<Vec<_>, _>>()?;
    all.sort_by_key(|e| e.0);
    Ok(all)
}

/// A delete of a key that is not there is done. (aya reports it as `KeyNotFound` for some maps
/// and as the syscall's ENOENT for hash maps.)
pub(super) fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}
