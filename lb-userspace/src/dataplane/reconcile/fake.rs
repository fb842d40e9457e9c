//! The reconciler's maps in memory, for tests without root. [`MemoryMaps`] records every write
//! and checks after each one that a packet could not meet a dangling reference; [`Faulty`]
//! fails the writes a test picks, on any [`ServiceMaps`].
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use lb_common::{
    Affinity, AffinityKey4, Backend4, Frontend4, Frontend4Key, Service, ServiceName, SlotKey,
    FE_F_SOURCE_RANGES,
};

use super::{ServiceMaps, Write};
use crate::dataplane::maps::KernelRange;

#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub frontends: BTreeMap<Frontend4Key, Frontend4>,
    pub services: BTreeMap<u32, Service>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, Backend4>,
    pub names: BTreeMap<u32, ServiceName>,
    pub ranges: BTreeSet<(u32, KernelRange)>,
    pub affinity: BTreeMap<AffinityKey4, Affinity>,
    /// Every write that succeeded, in order.
    pub journal: Vec<Write>,
}

impl MemoryMaps {
    /// What a packet could meet that is not whole: a frontend whose set is missing, a slot
    /// below a set's count that is missing or names a missing backend, a frontend flagged for
    /// source ranges that has none. Checked after every write.
    pub fn dangling(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, fe) in &self.frontends {
            if !self.services.contains_key(&fe.service_id) {
                out.push(format!(
                    "frontend {key:?} points to missing set {}",
                    fe.service_id
                ));
            }
            let ranges = self
                .ranges
                .range((fe.stats_id, (0, 0))..=(fe.stats_id, (u32::MAX, 255)));
            if fe.flags & FE_F_SOURCE_RANGES != 0 && ranges.count() == 0 {
                out.push(format!(
                    "frontend {key:?} filters on source ranges it lacks"
                ));
            }
        }
        for (id, svc) in &self.services {
            for slot in 0..svc.backend_count {
                let key = SlotKey {
                    service_id: *id,
                    slot,
                };
                match self.slots.get(&key) {
                    None => out.push(format!("set {id} shows missing slot {slot}")),
                    Some(b) if !self.backends.contains_key(b) => {
                        out.push(format!("set {id} slot {slot} names missing backend {b}"))
                    }
                    Some(_) => {}
                }
            }
        }
        out
    }

    /// What a finished apply must not leave besides [`Self::dangling`]: a name without its
    /// set, a slot no set shows, a range of no flagged frontend, an affinity entry naming a set
    /// that is gone or a backend its set no longer has.
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
        let flagged: BTreeSet<u32> = self
            .frontends
            .values()
            .filter(|f| f.flags & FE_F_SOURCE_RANGES != 0)
            .map(|f| f.stats_id)
            .collect();
        for (id, range) in &self.ranges {
            if !flagged.contains(id) {
                out.push(format!("range {range:?} of no flagged frontend ({id})"));
            }
        }
        for (key, a) in &self.affinity {
            if !self.set_backends(key.service_id).contains(&a.backend_id) {
                out.push(format!(
                    "affinity {key:?} names backend {} gone",
                    a.backend_id
                ));
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

impl ServiceMaps for MemoryMaps {
    fn frontends(&self) -> Result<Vec<(Frontend4Key, Frontend4)>> {
        Ok(self.frontends.iter().map(|(k, v)| (*k, *v)).collect())
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

    fn backends(&self) -> Result<Vec<(u32, Backend4)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>> {
        Ok(self.names.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn source_ranges(&self) -> Result<BTreeMap<u32, Vec<KernelRange>>> {
        let mut out: BTreeMap<u32, Vec<KernelRange>> = BTreeMap::new();
        for (id, range) in &self.ranges {
            out.entry(*id).or_default().push(*range);
        }
        Ok(out)
    }

    fn affinity(&self) -> Result<Vec<(AffinityKey4, Affinity)>> {
        Ok(self.affinity.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// Panics when the write leaves something a packet could meet dangling.
    fn write(&mut self, write: &Write) -> Result<()> {
        match write {
            Write::Frontend(k, v) => _ = self.frontends.insert(*k, *v),
            Write::RemoveFrontend(k) => _ = self.frontends.remove(k),
            Write::Service(id, v) => _ = self.services.insert(*id, *v),
            Write::RemoveService(id) => _ = self.services.remove(id),
            Write::Slot(k, v) => _ = self.slots.insert(*k, *v),
            Write::RemoveSlot(k) => _ = self.slots.remove(k),
            Write::Backend(id, v) => _ = self.backends.insert(*id, *v),
            Write::RemoveBackend(id) => _ = self.backends.remove(id),
            Write::Name(id, v) => _ = self.names.insert(*id, *v),
            Write::RemoveName(id) => _ = self.names.remove(id),
            Write::SourceRange(id, r) => _ = self.ranges.insert((*id, *r)),
            Write::RemoveSourceRange(id, r) => _ = self.ranges.remove(&(*id, *r)),
            Write::ResetCounters(_) => {}
            Write::RemoveAffinity(k) => _ = self.affinity.remove(k),
        }
        self.journal.push(write.clone());
        let dangling = self.dangling();
        assert!(dangling.is_empty(), "after {write}: {dangling:?}");
        Ok(())
    }
}

/// Whether write `n` (counted from 0) fails.
type Chooser = Box<dyn FnMut(usize, &Write) -> bool>;

/// Maps whose writes fail when the chooser says so.
pub struct Faulty<M> {
    pub inner: M,
    tried: usize,
    fail: Chooser,
}

impl<M: ServiceMaps> Faulty<M> {
    pub fn new(inner: M, fail: impl FnMut(usize, &Write) -> bool + 'static) -> Self {
        Faulty {
            inner,
            tried: 0,
            fail: Box::new(fail),
        }
    }
}

impl<M: ServiceMaps> ServiceMaps for Faulty<M> {
    fn frontends(&self) -> Result<Vec<(Frontend4Key, Frontend4)>> {
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

    fn backends(&self) -> Result<Vec<(u32, Backend4)>> {
        self.inner.backends()
    }

    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>> {
        self.inner.service_names()
    }

    fn source_ranges(&self) -> Result<BTreeMap<u32, Vec<KernelRange>>> {
        self.inner.source_ranges()
    }

    fn affinity(&self) -> Result<Vec<(AffinityKey4, Affinity)>> {
        self.inner.affinity()
    }

    fn write(&mut self, write: &Write) -> Result<()> {
        let n = self.tried;
        self.tried += 1;
        if (self.fail)(n, write) {
            bail!("injected failure of write {n}: {write}");
        }
        self.inner.write(write)
    }
}
