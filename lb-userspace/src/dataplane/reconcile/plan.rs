//! Planning: a service's sets, backends and frontends as map entries, with ids and room.
use std::collections::{HashMap, HashSet};

use lb_common::{map_names, Frontend4, FE_F_SOURCE_RANGES};

use super::{
    encode::{backend_value, frontend_key, kernel_addr, model_addr, service_value, Code},
    family::{KernelFamily, KernelRange},
    ids::alloc,
    index::{Index, Owned},
    programmed::{Programmed, ProgrammedSet},
    Half, Report, Stats,
};
use crate::{
    dataplane::maps::Capacities,
    model::{set_range, Backend, BackendSet, Desired, FrontendKey, ObjectRef, SetKey},
};

/// The room a family's plan has: the map sizes, less what the other family holds of the
/// shared maps (sets and slots; the shared stats ids are counted where they are kept).
#[derive(Clone, Copy)]
pub(super) struct Room {
    pub(super) caps: Capacities,
    pub(super) other_sets: usize,
    pub(super) other_slots: u64,
}

/// Builds the maps' next entries service by service, allocating ids and counting map usage.
pub(super) struct Planner<'a, A: KernelFamily> {
    room: Room,
    half: &'a mut Half<A>,
    stats: &'a mut Stats,
    pub(super) index: &'a mut Index<A>,
    desired: &'a Desired<A>,
    /// The planned services' entries (all the maps' on a full apply).
    target: Programmed<A>,
    /// Frontends in the maps once the plan is written.
    frontends: usize,
    /// Sets and backends this plan adds (not in the maps yet).
    fresh_sets: usize,
    fresh_backends: usize,
    /// Backends whose entry the plan decides (kept, changed or removed), by id.
    pub(super) touched: HashMap<u32, (A::Addr, u16)>,
}

impl<'a, A: KernelFamily> Planner<'a, A> {
    pub(super) fn new(
        (half, stats, room): (&'a mut Half<A>, &'a mut Stats, Room),
        index: &'a mut Index<A>,
        desired: &'a Desired<A>,
        frontends: usize,
    ) -> Self {
        Planner {
            room,
            half,
            stats,
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
        before: &mut Programmed<A>,
    ) -> Option<Owned<A>> {
        let owned = self.index.services.remove(service)?;
        for id in &owned.sets {
            let set = self.half.current.sets[id].clone();
            self.index.count_slots(&set.slots, -1);
            self.touch_slots(&set.slots);
            before.sets.insert(*id, set);
        }
        for key in &owned.frontends {
            before.copy_frontend(&self.half.current, key);
        }
        self.frontends -= owned.frontends.len();
        Some(owned)
    }

    fn touch_slots(&mut self, slots: &[u32]) {
        for b in slots {
            if let Some(be) = self.half.current.backends.get(b) {
                self.touched.insert(*b, super::index::addr_of::<A>(be));
            }
        }
    }

    /// Admit each service with the frontends it wins; services already programmed go first
    /// (an update never loses to a newcomer). One that does not fit keeps its `previous` entries;
    /// those are returned.
    pub(super) fn admit_in_order<'s>(
        &mut self,
        services: impl Iterator<Item = (&'s ObjectRef, Vec<FrontendKey<A>>)>,
        mut previous: HashMap<ObjectRef, Owned<A>>,
        report: &mut Report,
    ) -> HashMap<ObjectRef, Vec<FrontendKey<A>>> {
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
        frontends: &[FrontendKey<A>],
    ) -> Result<(), &'static str> {
        let sets: Vec<(&SetKey, &BackendSet<A>)> =
            self.desired.sets.range(set_range(service)).collect();
        let Room {
            caps,
            other_sets,
            other_slots,
        } = self.room;
        if self.frontends + frontends.len() > caps.frontends as usize {
            return Err(A::FRONTENDS);
        }
        // The counters are indexed by stats id, one array for both families' frontends, and
        // an id is free again only once its frontend is gone from the maps (after this apply):
        // two frontends never share one (nor its source ranges).
        let new_ids = frontends
            .iter()
            .filter(|k| !self.half.current.frontends.contains_key(&frontend_key(k)))
            .count();
        if self.stats.used.len() + new_ids > caps.frontends as usize {
            return Err(map_names::FRONTEND_STATS);
        }
        // Old sets go only after the new ones are in (step 5 of write_diff): count both.
        let fresh_sets = sets
            .iter()
            .filter(|(k, _)| !self.index.set_ids.contains_key(*k))
            .count();
        let sets_now = self.half.current.sets.len() + other_sets;
        if sets_now + self.fresh_sets + fresh_sets > caps.services as usize {
            return Err(map_names::SERVICES);
        }
        let slots: u64 = sets.iter().map(|(_, s)| s.backends.len() as u64).sum();
        if self.index.slots + other_slots + slots > caps.slots as u64 {
            return Err(map_names::SLOTS);
        }
        // Backends in the maps at the peak of the update: every current one (removals come
        // last), those this plan added so far, and this service's new ones.
        let fresh_backends: HashSet<(A::Addr, u16)> = sets
            .iter()
            .flat_map(|(_, s)| s.backends.iter().map(|b| kernel_addr(&(b.ip, b.port))))
            .filter(|a| !self.index.backend_ids.contains_key(a))
            .collect();
        let peak = self.half.current.backends.len() + self.fresh_backends + fresh_backends.len();
        if peak > caps.backends as usize {
            return Err(A::BACKENDS);
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

    fn add_set(&mut self, key: &SetKey, set: &BackendSet<A>) -> u32 {
        let id = match self.index.set_ids.get(key) {
            Some(id) => *id,
            None => {
                self.fresh_sets += 1;
                let cursor = &mut self.half.cursors.set;
                let id = alloc(cursor, A::IDS, &mut self.index.sets_used);
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

    fn backend_id(&mut self, b: &Backend<A>) -> u32 {
        let addr = kernel_addr(&(b.ip, b.port));
        let id = match self.index.backend_ids.get(&addr) {
            Some(id) => *id,
            None => {
                self.fresh_backends += 1;
                let used = &mut self.index.backends_used;
                let id = alloc(&mut self.half.cursors.backend, A::IDS, used);
                self.index.backend_ids.insert(addr, id);
                id
            }
        };
        self.touched.insert(id, addr);
        self.target.backends.insert(id, backend_value(addr, b));
        id
    }

    fn add_frontend(&mut self, key: &FrontendKey<A>) -> A::FrontendKey {
        let kernel_key = frontend_key(key);
        let fe = &self.desired.frontends[key];
        let stats_id = match self.half.current.frontends.get(&kernel_key) {
            Some(fe) => fe.stats_id,
            None => {
                let ids = 0..self.room.caps.frontends;
                alloc(&mut self.stats.cursor, ids, &mut self.stats.used)
            }
        };
        let mut flags = 0;
        if let Some(ranges) = &fe.source_ranges {
            let mut kernel: Vec<KernelRange<A>> =
                ranges.iter().map(|(ip, len)| (ip.kernel(), *len)).collect();
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
    fn keep(&mut self, service: &ObjectRef, owned: Owned<A>) {
        for id in &owned.sets {
            let set = self.half.current.sets[id].clone();
            self.index.count_slots(&set.slots, 1);
            self.touch_slots(&set.slots);
            self.target.sets.insert(*id, set);
        }
        for key in &owned.frontends {
            self.target.copy_frontend(&self.half.current, key);
        }
        self.frontends += owned.frontends.len();
        self.index.services.insert(service.clone(), owned);
    }

    /// Decide the touched backends: a backend stays while a slot names it, or while its
    /// endpoint is still listed (terminating, not ready: established connections to it keep
    /// going), with the flags of the endpoint's listing. Returns the target and the ids decided.
    pub(super) fn finish(mut self) -> (Programmed<A>, Vec<u32>) {
        let touched = std::mem::take(&mut self.touched);
        for (id, addr) in &touched {
            let named = self.index.backend_refs.get(id).is_some_and(|n| *n > 0);
            match self.desired.retained.get(&model_addr(*addr)) {
                Some(b) => {
                    self.target.backends.insert(*id, backend_value(*addr, b));
                }
                // Named by a set the model did not list (or kept from before): as it is.
                None if named => {
                    if let Some(b) = self.half.current.backends.get(id) {
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
