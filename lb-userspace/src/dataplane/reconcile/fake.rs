//! The reconciler's maps in memory, for tests without root. [`MemoryMaps`] records every write
//! and checks after each one that a packet could not meet a dangling reference; [`Faulty`]
//! fails the writes a test picks, on any [`ServiceMaps`].
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use lb_common::{Frontend4, Service, ServiceName, SlotKey, FE_F_SOURCE_RANGES};

use super::{
    family::{KernelFamily, KernelRange},
    ServiceMaps, Write,
};

/// One family's maps.
#[derive(Clone, Debug)]
pub struct FakeFamily<A: KernelFamily> {
    pub frontends: BTreeMap<A::FrontendKey, Frontend4>,
    pub backends: BTreeMap<u32, A::Backend>,
    pub ranges: BTreeSet<(u32, KernelRange<A>)>,
    pub affinity: BTreeMap<A::AffinityKey, A::Affinity>,
}

impl<A: KernelFamily> Default for FakeFamily<A> {
    fn default() -> Self {
        FakeFamily {
            frontends: BTreeMap::new(),
            backends: BTreeMap::new(),
            ranges: BTreeSet::new(),
            affinity: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub v4: FakeFamily<Ipv4Addr>,
    pub v6: FakeFamily<Ipv6Addr>,
    pub services: BTreeMap<u32, Service>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub names: BTreeMap<u32, ServiceName>,
    /// Every write that succeeded, in order (as [`Write`] displays it).
    pub journal: Vec<String>,
}

/// [`MemoryMaps`]' part for family `A`.
pub trait FakeOf<A: KernelFamily> {
    fn family(&self) -> &FakeFamily<A>;
    fn family_mut(&mut self) -> &mut FakeFamily<A>;
}

impl FakeOf<Ipv4Addr> for MemoryMaps {
    fn family(&self) -> &FakeFamily<Ipv4Addr> {
        &self.v4
    }

    fn family_mut(&mut self) -> &mut FakeFamily<Ipv4Addr> {
        &mut self.v4
    }
}

impl FakeOf<Ipv6Addr> for MemoryMaps {
    fn family(&self) -> &FakeFamily<Ipv6Addr> {
        &self.v6
    }

    fn family_mut(&mut self) -> &mut FakeFamily<Ipv6Addr> {
        &mut self.v6
    }
}

impl MemoryMaps {
    /// What a packet could meet that is not whole: a frontend whose set is missing, a slot
    /// below a set's count that is missing or names a missing backend (of the set's family),
    /// a frontend flagged for source ranges that has none. Checked after every write.
    pub fn dangling(&self) -> Vec<String> {
        let mut out = self.dangling_frontends(&self.v4);
        out.extend(self.dangling_frontends(&self.v6));
        for (id, svc) in &self.services {
            for slot in 0..svc.backend_count {
                let key = SlotKey {
                    service_id: *id,
                    slot,
                };
                let backend_exists = |b: &u32| match Ipv4Addr::IDS.contains(id) {
                    true => self.v4.backends.contains_key(b),
                    false => self.v6.backends.contains_key(b),
                };
                match self.slots.get(&key) {
                    None => out.push(format!("set {id} shows missing slot {slot}")),
                    Some(b) if !backend_exists(b) => {
                        out.push(format!("set {id} slot {slot} names missing backend {b}"))
                    }
                    Some(_) => {}
                }
            }
        }
        out
    }

    fn dangling_frontends<A: KernelFamily>(&self, f: &FakeFamily<A>) -> Vec<String> {
        let mut out = Vec::new();
        for (key, fe) in &f.frontends {
            if !self.services.contains_key(&fe.service_id) || !A::IDS.contains(&fe.service_id) {
                out.push(format!(
                    "frontend {key:?} points to missing set {}",
                    fe.service_id
                ));
            }
            // Every range of this stats id: the address's default is its lowest value.
            let lowest = (A::Addr::default(), 0);
            let ranges = f
                .ranges
                .range((fe.stats_id, lowest)..(fe.stats_id + 1, lowest));
            let has_ranges = ranges.count() > 0;
            if fe.flags & FE_F_SOURCE_RANGES != 0 && !has_ranges {
                out.push(format!(
                    "frontend {key:?} filters on source ranges it lacks"
                ));
            }
        }
        out
    }

    /// What a finished apply must not leave besides [`Self::dangling`]: a name without its
    /// set, a slot no set shows, a range of no flagged frontend, an affinity entry naming a set
    /// that is gone or a backend its set no longer has, two frontends counted by one stats id.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = self.dangling();
        for id in self.names.keys() {
            if !self.services.contains_key(id) {
                out.push(format!("name of missing set {id}"));
            }
        }
        for key in self.slots.keys() {
            let count = self.services.get(&key.service_id).map(|s| s.backend_count);
            if count.is_none_or(|n| key.slot >= n) {
                out.push(format!("slot {key:?} no set shows"));
            }
        }
        out.extend(self.family_leftovers(&self.v4));
        out.extend(self.family_leftovers(&self.v6));
        let stats = self.v4.frontends.values().chain(self.v6.frontends.values());
        let mut seen = BTreeSet::new();
        for fe in stats {
            if !seen.insert(fe.stats_id) {
                out.push(format!("stats id {} counts two frontends", fe.stats_id));
            }
        }
        out
    }

    fn family_leftovers<A: KernelFamily>(&self, f: &FakeFamily<A>) -> Vec<String> {
        let mut out = Vec::new();
        let flagged: BTreeSet<u32> = f
            .frontends
            .values()
            .filter(|f| f.flags & FE_F_SOURCE_RANGES != 0)
            .map(|f| f.stats_id)
            .collect();
        for (id, range) in &f.ranges {
            if !flagged.contains(id) {
                out.push(format!("range {range:?} of no flagged frontend ({id})"));
            }
        }
        for (key, a) in &f.affinity {
            let (set, backend) = A::affinity_pair(key, a);
            if !self.set_backends(set).contains(&backend) {
                out.push(format!("affinity {key:?} names backend {backend} gone"));
            }
        }
        out
    }

    /// The backends set `id` shows.
    pub fn set_backends(&self, id: u32) -> Vec<u32> {
        let count = self.services.get(&id).map_or(0, |s| s.backend_count);
        (0..count)
            .filter_map(|slot| {
                let key = SlotKey {
                    service_id: id,
                    slot,
                };
                self.slots.get(&key).copied()
            })
            .collect()
    }
}

impl<A: KernelFamily> ServiceMaps<A> for MemoryMaps
where
    MemoryMaps: FakeOf<A>,
{
    fn frontends(&self) -> Result<Vec<(A::FrontendKey, Frontend4)>> {
        Ok(self
            .family()
            .frontends
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn services(&self) -> Result<Vec<(u32, Service)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn service(&self, id: u32) -> Result<Option<Service>> {
        Ok(self.services.get(&id).copied())
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>> {
        Ok(self.slots.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn backends(&self) -> Result<Vec<(u32, A::Backend)>> {
        Ok(self
            .family()
            .backends
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>> {
        Ok(self.names.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn source_ranges(&self) -> Result<BTreeMap<u32, Vec<KernelRange<A>>>> {
        let mut out: BTreeMap<u32, Vec<KernelRange<A>>> = BTreeMap::new();
        for (id, range) in &self.family().ranges {
            out.entry(*id).or_default().push(*range);
        }
        Ok(out)
    }

    fn affinity(&self) -> Result<Vec<(A::AffinityKey, A::Affinity)>> {
        Ok(self
            .family()
            .affinity
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    /// Panics when the write leaves something a packet could meet dangling.
    fn write(&mut self, write: &Write<A>) -> Result<()> {
        match write {
            Write::Service(id, v) => _ = self.services.insert(*id, *v),
            Write::RemoveService(id) => _ = self.services.remove(id),
            Write::Slot(k, v) => _ = self.slots.insert(*k, *v),
            Write::RemoveSlot(k) => _ = self.slots.remove(k),
            Write::Name(id, v) => _ = self.names.insert(*id, *v),
            Write::RemoveName(id) => _ = self.names.remove(id),
            Write::ResetCounters(_) => {}
            own => {
                let f = self.family_mut();
                match own {
                    Write::Frontend(k, v) => _ = f.frontends.insert(*k, *v),
                    Write::RemoveFrontend(k) => _ = f.frontends.remove(k),
                    Write::Backend(id, v) => _ = f.backends.insert(*id, *v),
                    Write::RemoveBackend(id) => _ = f.backends.remove(id),
                    Write::SourceRange(id, r) => _ = f.ranges.insert((*id, *r)),
                    Write::RemoveSourceRange(id, r) => _ = f.ranges.remove(&(*id, *r)),
                    Write::RemoveAffinity(k) => _ = f.affinity.remove(k),
                    _ => unreachable!("shared writes are matched above"),
                }
            }
        }
        self.journal.push(write.to_string());
        let dangling = self.dangling();
        assert!(dangling.is_empty(), "after {write}: {dangling:?}");
        Ok(())
    }
}

/// Whether write `n` (counted from 0, as [`Write`] displays it) fails.
type Chooser = Box<dyn FnMut(usize, &str) -> bool>;

/// Maps whose writes fail when the chooser says so.
pub struct Faulty<M> {
    pub inner: M,
    tried: usize,
    fail: Chooser,
}

impl<M> Faulty<M> {
    pub fn new(inner: M, fail: impl FnMut(usize, &str) -> bool + 'static) -> Self {
        Faulty {
            inner,
            tried: 0,
            fail: Box::new(fail),
        }
    }
}

impl<A: KernelFamily, M: ServiceMaps<A>> ServiceMaps<A> for Faulty<M> {
    fn frontends(&self) -> Result<Vec<(A::FrontendKey, Frontend4)>> {
        self.inner.frontends()
    }

    fn services(&self) -> Result<Vec<(u32, Service)>> {
        self.inner.services()
    }

    fn service(&self, id: u32) -> Result<Option<Service>> {
        self.inner.service(id)
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>> {
        self.inner.slots()
    }

    fn backends(&self) -> Result<Vec<(u32, A::Backend)>> {
        self.inner.backends()
    }

    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>> {
        self.inner.service_names()
    }

    fn source_ranges(&self) -> Result<BTreeMap<u32, Vec<KernelRange<A>>>> {
        self.inner.source_ranges()
    }

    fn affinity(&self) -> Result<Vec<(A::AffinityKey, A::Affinity)>> {
        self.inner.affinity()
    }

    fn write(&mut self, write: &Write<A>) -> Result<()> {
        let n = self.tried;
        self.tried += 1;
        if (self.fail)(n, &write.to_string()) {
            bail!("injected failure of write {n}: {write}");
        }
        self.inner.write(write)
    }
}
