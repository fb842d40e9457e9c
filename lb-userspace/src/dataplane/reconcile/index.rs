//! Lookups derived from what the maps hold, kept alongside it.
use std::collections::{HashMap, HashSet};

use super::{family::KernelFamily, programmed::Programmed};
use crate::model::{ObjectRef, SetKey};

/// Lookups derived from [`Programmed`], kept alongside it so that planning one service's change
/// costs that service's entries, not the whole maps. (Stats ids are shared by the families:
/// the reconciler keeps those.)
pub(super) struct Index<A: KernelFamily> {
    pub(super) set_ids: HashMap<SetKey, u32>,
    pub(super) backend_ids: HashMap<(A::Addr, u16), u32>,
    /// Ids taken, in the maps or by the plan under way.
    pub(super) sets_used: HashSet<u32>,
    pub(super) backends_used: HashSet<u32>,
    /// What each service has in the maps.
    pub(super) services: HashMap<ObjectRef, Owned<A>>,
    /// How many slots name each backend.
    pub(super) backend_refs: HashMap<u32, u32>,
    pub(super) slots: u64,
}

/// One service's entries in the maps.
#[derive(Clone, Debug)]
pub(super) struct Owned<A: KernelFamily> {
    pub(super) sets: Vec<u32>,
    pub(super) frontends: Vec<A::FrontendKey>,
}

impl<A: KernelFamily> Default for Owned<A> {
    fn default() -> Self {
        Owned {
            sets: Vec::new(),
            frontends: Vec::new(),
        }
    }
}

impl<A: KernelFamily> Default for Index<A> {
    fn default() -> Self {
        Index {
            set_ids: HashMap::new(),
            backend_ids: HashMap::new(),
            sets_used: HashSet::new(),
            backends_used: HashSet::new(),
            services: HashMap::new(),
            backend_refs: HashMap::new(),
            slots: 0,
        }
    }
}

/// The (address, port) a backend is known by.
pub(super) fn addr_of<A: KernelFamily>(b: &A::Backend) -> (A::Addr, u16) {
    let (addr, port, _) = A::backend_parts(b);
    (addr, port)
}

impl<A: KernelFamily> Index<A> {
    pub(super) fn of(p: &Programmed<A>) -> Self {
        let mut index = Index {
            backend_ids: p
                .backends
                .iter()
                .map(|(id, b)| (addr_of::<A>(b), *id))
                .collect(),
            sets_used: p.sets.keys().copied().collect(),
            backends_used: p.backends.keys().copied().collect(),
            ..Default::default()
        };
        for (id, set) in &p.sets {
            let Some(key) = &set.key else { continue };
            index.set_ids.insert(key.clone(), *id);
            index.owned(&key.service).sets.push(*id);
            index.count_slots(&set.slots, 1);
        }
        for (key, fe) in &p.frontends {
            let service = p.sets.get(&fe.service_id).and_then(|s| s.key.as_ref());
            if let Some(key_of_set) = service {
                index
                    .owned(&key_of_set.service.clone())
                    .frontends
                    .push(*key);
            }
        }
        index
    }

    pub(super) fn owned(&mut self, service: &ObjectRef) -> &mut Owned<A> {
        self.services.entry(service.clone()).or_default()
    }

    /// Add (`by` = 1) or take away (`by` = -1) a set's slots from the reference counts.
    pub(super) fn count_slots(&mut self, slots: &[u32], by: i64) {
        for b in slots {
            let refs = self.backend_refs.entry(*b).or_default();
            *refs = (*refs as i64 + by) as u32;
        }
        self.slots = (self.slots as i64 + by * slots.len() as i64) as u64;
    }

    /// Forget entries the maps no longer hold (after an incremental apply).
    pub(super) fn forget(&mut self, gone: &Programmed<A>) {
        for (id, set) in &gone.sets {
            if let Some(key) = &set.key {
                self.set_ids.remove(key);
            }
            self.sets_used.remove(id);
        }
        for (id, b) in &gone.backends {
            self.backend_ids.remove(&addr_of::<A>(b));
            self.backends_used.remove(id);
            self.backend_refs.remove(id);
        }
    }
}
