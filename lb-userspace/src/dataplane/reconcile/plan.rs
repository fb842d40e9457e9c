//! Planning: a service's sets, backends and frontends as map entries, with ids and room.
use std::collections::{HashMap, HashSet};

use lb_common::{Frontend4, Frontend4Key, FE_F_SOURCE_RANGES};

use super::{
    encode::{backend_value, be_addr, frontend_key, kernel_addr, model_addr, service_value, Code},
    ids::{alloc, Cursors, ID_LIMIT},
    index::{Index, Owned},
    programmed::{Programmed, ProgrammedSet},
    Reconciler, Report,
};
use crate::{
    dataplane::maps::{Capacities, KernelRange},
    model::{set_range, BackendSet, Desired, FrontendKey, ObjectRef, SetKey},
};

/// Builds the maps' next entries service by service, allocating ids and counting map usage.
pub(super) struct Planner<'a> {
    caps: Capacities,
    cursors: &'a mut Cursors,
    current: &'a Programmed,
    pub(super) index: &'a mut Index,
    desired: &'a Desired,
    /// The planned services' entries (all the maps' on a full apply).
    target: Programmed,
    /// Frontends in the maps once the plan is written.
    frontends: usize,
    /// Sets and backends this plan adds (not in the maps yet).
    fresh_sets: usize,
    fresh_backends: usize,
    /// Backends whose entry the plan decides (kept, changed or removed), by id.
    pub(super) touched: HashMap<u32, (u32, u16)>,
}

impl<'a> Planner<'a> {
    pub(super) fn new(
        rec: &'a mut Reconciler,
        index: &'a mut Index,
        desired: &'a Desired,
        frontends: usize,
    ) -> Self {
        Planner {
            caps: rec.caps,
            cursors: &mut rec.cursors,
            current: &rec.current,
            index,
            desired,
            target: Programmed::default(),
            frontends,
            fresh_sets: 0,
            fresh_backends: 0,
            touched: HashMap::new(),
        }
    }

    /// Take a service's entries out of the usage counts, copying them into `before`.
    pub(super) fn release(
        &mut self,
        service: &ObjectRef,
        before: &mut Programmed,
    ) -> Option<Owned> {
        let owned = self.index.services.remove(service)?;
        for id in &owned.sets {
            let set = &self.current.sets[id];
            self.index.count_slots(&set.slots, -1);
            self.touch_slots(&set.slots);
            before.sets.insert(*id, set.clone());
        }
        for key in &owned.frontends {
            before.copy_frontend(self.current, key);
        }
        self.frontends -= owned.frontends.len();
        Some(owned)
    }

    fn touch_slots(&mut self, slots: &[u32]) {
        for b in slots {
            if let Some(be) = self.current.backends.get(b) {
                self.touched.insert(*b, (be.addr, be.port));
            }
        }
    }

    /// Admit each service with the frontends it wins; services already programmed go first
    /// (an update never loses to a newcomer). One that does not fit keeps its `previous` entries;
    /// those are returned.
    pub(super) fn admit_in_order<'s>(
        &mut self,
        services: impl Iterator<Item = (&'s ObjectRef, Vec<FrontendKey>)>,
        mut previous: HashMap<ObjectRef, Owned>,
        report: &mut Report,
    ) -> HashMap<ObjectRef, Vec<FrontendKey>> {
        let mut refused = HashMap::new();
        let mut services: Vec<_> = services.collect();
        services.sort_by(|(a, _), (b, _)| {
            let known = |s: &ObjectRef| !previous.contains_key(s);
            (known(a), *a).cmp(&(known(b), *b))
        });
        for (service, frontends) in services {
            if let Err(map) = self.admit(service, &frontends) {
                report.refused.push((service.clone(), map));
                if let Some(owned) = previous.remove(service) {
                    self.keep(service, owned);
                }
                refused.insert(service.clone(), frontends);
            }
        }
        refused
    }

    /// Add one service's sets and frontends to the target, or say which map it overflows.
    fn admit(
        &mut self,
        service: &ObjectRef,
        frontends: &[FrontendKey],
    ) -> Result<(), &'static str> {
        let sets: Vec<(&SetKey, &BackendSet)> =
            self.desired.sets.range(set_range(service)).collect();
        let caps = self.caps;
        if self.frontends + frontends.len() > caps.frontends as usize {
            return Err(lb_common::map_names::FRONTENDS4);
        }
        // Old sets go only after the new ones are in (step 5 of write_diff): count both.
        let fresh_sets = sets
            .iter()
            .filter(|(k, _)| !self.index.set_ids.contains_key(*k))
            .count();
        if self.current.sets.len() + self.fresh_sets + fresh_sets > caps.services as usize {
            return Err(lb_common::map_names::SERVICES);
        }
        let slots: u64 = sets.iter().map(|(_, s)| s.backends.len() as u64).sum();
        if self.index.slots + slots > caps.slots as u64 {
            return Err(lb_common::map_names::SLOTS);
        }
        // Backends in the maps at the peak of the update: every current one (removals come
        // last), those this plan added so far, and this service's new ones.
        let fresh_backends: HashSet<(u32, u16)> = sets
            .iter()
            .flat_map(|(_, s)| s.backends.iter().map(|b| kernel_addr(&(b.ip, b.port))))
            .filter(|a| !self.index.backend_ids.contains_key(a))
            .collect();
        let peak = self.current.backends.len() + self.fresh_backends + fresh_backends.len();
        if peak > caps.backends as usize {
            return Err(lb_common::map_names::BACKENDS4);
        }
        let mut owned = Owned::default();
        for (key, set) in sets {
            owned.sets.push(self.add_set(key, set));
        }
        for key in frontends {
            owned.frontends.push(self.add_frontend(key));
        }
        self.index.services.insert(service.clone(), owned);
        Ok(())
    }

    fn add_set(&mut self, key: &SetKey, set: &BackendSet) -> u32 {
        let id = match self.index.set_ids.get(key) {
            Some(id) => *id,
            None => {
                self.fresh_sets += 1;
                let id = alloc(&mut self.cursors.set, ID_LIMIT, &mut self.index.sets_used);
                self.index.set_ids.insert(key.clone(), id);
                id
            }
        };
        let slots: Vec<u32> = set.backends.iter().map(|b| self.backend_id(b)).collect();
        self.index.count_slots(&slots, 1);
        let programmed = ProgrammedSet {
            key: Some(key.clone()),
            service: service_value(set),
            slots,
        };
        self.target.sets.insert(id, programmed);
        id
    }

    fn backend_id(&mut self, b: &crate::model::Backend) -> u32 {
        let addr = kernel_addr(&(b.ip, b.port));
        let id = match self.index.backend_ids.get(&addr) {
            Some(id) => *id,
            None => {
                self.fresh_backends += 1;
                let used = &mut self.index.backends_used;
                let id = alloc(&mut self.cursors.backend, ID_LIMIT, used);
                self.index.backend_ids.insert(addr, id);
                id
            }
        };
        self.touched.insert(id, addr);
        self.target.backends.insert(id, backend_value(addr, b));
        id
    }

    fn add_frontend(&mut self, key: &FrontendKey) -> Frontend4Key {
        let kernel_key = frontend_key(key);
        let fe = &self.desired.frontends[key];
        let stats_id = match self.current.frontends.get(&kernel_key) {
            Some(fe) => fe.stats_id,
            None => {
                let limit = self.caps.frontends;
                alloc(&mut self.cursors.stats, limit, &mut self.index.stats_used)
            }
        };
        let mut flags = 0;
        if let Some(ranges) = &fe.source_ranges {
            let mut kernel: Vec<KernelRange> = ranges
                .iter()
                .map(|(ip, len)| (be_addr(*ip), *len))
                .collect();
            kernel.sort_unstable();
            self.target.ranges.insert(stats_id, kernel);
            flags |= FE_F_SOURCE_RANGES;
        }
        let value = Frontend4 {
            service_id: self.index.set_ids[&fe.set],
            stats_id,
            kind: fe.kind.code(),
            flags,
            _pad: [0; 2],
        };
        self.target.frontends.insert(kernel_key, value);
        self.frontends += 1;
        kernel_key
    }

    /// A refused service keeps whatever the maps already hold for it.
    fn keep(&mut self, service: &ObjectRef, owned: Owned) {
        for id in &owned.sets {
            let set = self.current.sets[id].clone();
            self.index.count_slots(&set.slots, 1);
            self.touch_slots(&set.slots);
            self.target.sets.insert(*id, set);
        }
        for key in &owned.frontends {
            self.target.copy_frontend(self.current, key);
        }
        self.frontends += owned.frontends.len();
        self.index.services.insert(service.clone(), owned);
    }

    /// Decide the touched backends: a backend stays while a slot names it, or while its
    /// endpoint is still listed (terminating, not ready: established connections to it keep
    /// going), with the flags of the endpoint's listing. Returns the target and the ids decided.
    pub(super) fn finish(mut self) -> (Programmed, Vec<u32>) {
        let touched = std::mem::take(&mut self.touched);
        for (id, addr) in &touched {
            let named = self.index.backend_refs.get(id).is_some_and(|n| *n > 0);
            match self.desired.retained.get(&model_addr(*addr)) {
                Some(b) => {
                    self.target.backends.insert(*id, backend_value(*addr, b));
                }
                // Named by a set the model did not list (or kept from before): as it is.
                None if named => {
                    if let Some(b) = self.current.backends.get(id) {
                        self.target.backends.entry(*id).or_insert(*b);
                    }
                }
                None => {
                    self.target.backends.remove(id);
                }
            }
        }
        self.index.backend_refs.retain(|_, n| *n > 0);
        (self.target, touched.into_keys().collect())
    }
}
