//! The maps the reconciler owns, as it sees them: whole-map reads and single-entry writes.
//!
//! A trait, so that the pinned aya maps, the in-memory fake of [`super::fake`] and its
//! fault-injecting wrapper stand in for each other: the reconciler's ordering and error paths are
//! tested without root. Every write names one entry of one map ([`Write`]), which is what lets
//! the fake check after each of them that no packet could meet a dangling reference.
use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use aya::maps::PerCpuValues;
use lb_common::{Counters, Frontend4, Service, ServiceName, SlotKey};

use super::family::{KernelFamily, KernelRange};
use crate::dataplane::{
    batch,
    maps::{ignore_missing, FamilyMaps, FamilyOf, Maps},
};

/// One entry written to, or removed from, one map. Removing an entry that is not there succeeds.
/// Frontends, backends, ranges and affinity are family `A`'s maps; the rest are shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write<A: KernelFamily> {
    Frontend(A::FrontendKey, Frontend4),
    RemoveFrontend(A::FrontendKey),
    /// A backend set's entry (`backend_count` makes its slots visible).
    Service(u32, Service),
    RemoveService(u32),
    Slot(SlotKey, u32),
    RemoveSlot(SlotKey),
    Backend(u32, A::Backend),
    RemoveBackend(u32),
    Name(u32, ServiceName),
    RemoveName(u32),
    /// A frontend's source range, by the frontend's stats id.
    SourceRange(u32, KernelRange<A>),
    RemoveSourceRange(u32, KernelRange<A>),
    /// Zero a stats id's counters before a new frontend takes it.
    ResetCounters(u32),
    RemoveAffinity(A::AffinityKey),
}

impl<A: KernelFamily> fmt::Display for Write<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::Frontend(k, _) => write!(f, "writing frontend {k:?}"),
            Write::RemoveFrontend(k) => write!(f, "removing frontend {k:?}"),
            Write::Service(id, _) => write!(f, "writing service {id}"),
            Write::RemoveService(id) => write!(f, "removing service {id}"),
            Write::Slot(k, _) => write!(f, "writing service {} slot {}", k.service_id, k.slot),
            Write::RemoveSlot(k) => {
                write!(f, "removing service {} slot {}", k.service_id, k.slot)
            }
            Write::Backend(id, _) => write!(f, "writing backend {id}"),
            Write::RemoveBackend(id) => write!(f, "removing backend {id}"),
            Write::Name(id, _) => write!(f, "writing the name of service {id}"),
            Write::RemoveName(id) => write!(f, "removing the name of service {id}"),
            Write::SourceRange(id, r) => write!(f, "writing source range {r:?} of frontend {id}"),
            Write::RemoveSourceRange(id, r) => {
                write!(f, "removing source range {r:?} of frontend {id}")
            }
            Write::ResetCounters(id) => write!(f, "zeroing the counters of frontend {id}"),
            Write::RemoveAffinity(k) => write!(f, "removing affinity entry {k:?}"),
        }
    }
}

pub trait ServiceMaps<A: KernelFamily> {
    fn frontends(&self) -> Result<Vec<(A::FrontendKey, Frontend4)>>;
    fn services(&self) -> Result<Vec<(u32, Service)>>;
    fn service(&self, id: u32) -> Result<Option<Service>>;
    /// Every slot, of every set (read whole: one walk instead of a lookup per slot).
    fn slots(&self) -> Result<Vec<(SlotKey, u32)>>;
    fn backends(&self) -> Result<Vec<(u32, A::Backend)>>;
    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>>;
    /// Every frontend's source ranges, by stats id (sorted).
    fn source_ranges(&self) -> Result<BTreeMap<u32, Vec<KernelRange<A>>>>;
    /// Session-affinity entries (the datapath writes them; the reconciler removes stale ones).
    fn affinity(&self) -> Result<Vec<(A::AffinityKey, A::Affinity)>>;
    fn write(&mut self, write: &Write<A>) -> Result<()>;

    fn set_backend(&mut self, id: u32, backend: &A::Backend) -> Result<()> {
        self.write(&Write::Backend(id, *backend))
    }

    fn set_frontend(&mut self, key: &A::FrontendKey, frontend: &Frontend4) -> Result<()> {
        self.write(&Write::Frontend(*key, *frontend))
    }

    fn remove_frontend(&mut self, key: &A::FrontendKey) -> Result<()> {
        self.write(&Write::RemoveFrontend(*key))
    }

    /// Program a backend set: slots first, then the count that makes them visible, then the
    /// slots beyond the new count go. `previous` is the old backend count.
    fn set_service(
        &mut self,
        id: u32,
        service: &Service,
        backends: &[u32],
        previous: u32,
    ) -> Result<()> {
        for (slot, backend) in backends.iter().enumerate() {
            let key = SlotKey {
                service_id: id,
                slot: slot as u32,
            };
            self.write(&Write::Slot(key, *backend))?;
        }
        let value = Service {
            backend_count: backends.len() as u32,
            ..*service
        };
        self.write(&Write::Service(id, value))?;
        for slot in backends.len() as u32..previous {
            self.write(&Write::RemoveSlot(SlotKey {
                service_id: id,
                slot,
            }))?;
        }
        Ok(())
    }

    /// Remove a set (its count first, which hides its slots), then its slots (its frontends
    /// must be gone already).
    fn remove_service(&mut self, id: u32) -> Result<()> {
        let count = self.service(id)?.map_or(0, |s| s.backend_count);
        self.write(&Write::RemoveService(id))?;
        for slot in 0..count {
            self.write(&Write::RemoveSlot(SlotKey {
                service_id: id,
                slot,
            }))?;
        }
        Ok(())
    }

    /// Remove a set, its slots and then its name.
    fn remove_named_service(&mut self, id: u32) -> Result<()> {
        self.remove_service(id)?;
        self.write(&Write::RemoveName(id))
    }
}

/// Maps that hold both families (the pinned maps, the fake): what the reconciler adopts and
/// re-reads, and what lbctl shows.
pub trait DualMaps: ServiceMaps<Ipv4Addr> + ServiceMaps<Ipv6Addr> {}
impl<M: ServiceMaps<Ipv4Addr> + ServiceMaps<Ipv6Addr>> DualMaps for M {}

impl<A: KernelFamily> ServiceMaps<A> for Maps
where
    Maps: FamilyOf<A>,
{
    // Whole maps are read in batches (BPF_MAP_LOOKUP_BATCH): a few hundred syscalls for what
    // aya's iterator reads with two per entry (two million at 50,000 services).
    fn frontends(&self) -> Result<Vec<(A::FrontendKey, Frontend4)>> {
        self.family()
            .map_or(Ok(Vec::new()), |f| batch::read_all(&f.frontends))
    }

    fn services(&self) -> Result<Vec<(u32, Service)>> {
        batch::read_all(&self.services)
    }

    fn service(&self, id: u32) -> Result<Option<Service>> {
        match self.services.get(&id, 0) {
            Ok(s) => Ok(Some(s)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("service {id}")),
        }
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>> {
        batch::read_all(&self.slots)
    }

    fn backends(&self) -> Result<Vec<(u32, A::Backend)>> {
        self.family()
            .map_or(Ok(Vec::new()), |f| batch::read_all(&f.backends))
    }

    fn service_names(&self) -> Result<Vec<(u32, ServiceName)>> {
        batch::read_all(&self.service_names)
    }

    fn source_ranges(&self) -> Result<BTreeMap<u32, Vec<KernelRange<A>>>> {
        self.family()
            .map_or(Ok(BTreeMap::new()), FamilyMaps::read_source_ranges)
    }

    fn affinity(&self) -> Result<Vec<(A::AffinityKey, A::Affinity)>> {
        let Some(f) = self.family() else {
            return Ok(Vec::new());
        };
        Ok(f.affinity.iter().filter_map(|e| e.ok()).collect())
    }

    fn write(&mut self, write: &Write<A>) -> Result<()> {
        let done = match write {
            Write::Service(id, v) => Ok(self.services.insert(id, v, 0)?),
            Write::RemoveService(id) => ignore_missing(self.services.remove(id)),
            Write::Slot(k, v) => Ok(self.slots.insert(k, v, 0)?),
            Write::RemoveSlot(k) => ignore_missing(self.slots.remove(k)),
            Write::Name(id, v) => Ok(self.service_names.insert(id, v, 0)?),
            Write::RemoveName(id) => ignore_missing(self.service_names.remove(id)),
            Write::ResetCounters(id) => self.reset_frontend_counters(*id),
            family => self.family_mut().and_then(|f| f.write(family)),
        };
        done.with_context(|| write.to_string())
    }
}

impl<A: KernelFamily> FamilyMaps<A> {
    /// A write to this family's own maps (the shared ones are [`Maps`]').
    fn write(&mut self, write: &Write<A>) -> Result<()> {
        match write {
            Write::Frontend(k, v) => Ok(self.frontends.insert(k, v, 0)?),
            Write::RemoveFrontend(k) => ignore_missing(self.frontends.remove(k)),
            Write::Backend(id, v) => Ok(self.backends.insert(id, v, 0)?),
            Write::RemoveBackend(id) => ignore_missing(self.backends.remove(id)),
            Write::SourceRange(id, r) => self.set_source_range(*id, *r),
            Write::RemoveSourceRange(id, r) => self.remove_source_range(*id, *r),
            Write::RemoveAffinity(k) => ignore_missing(self.affinity.remove(k)),
            shared => unreachable!("{shared} is not a write to one family's maps"),
        }
    }
}

impl Maps {
    /// Zero a frontend's counters before its stats id is given to a new frontend.
    fn reset_frontend_counters(&mut self, stats_id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zero = PerCpuValues::try_from(vec![Counters::default(); cpus])?;
        self.frontend_stats.set(stats_id, zero, 0)?;
        if let Some(drops) = &mut self.source_range_drops {
            drops.set(stats_id, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
        }
        let zero = PerCpuValues::try_from(vec![0u64; cpus])?;
        Ok(self.sock_stats.set(stats_id, zero, 0)?)
    }
}
