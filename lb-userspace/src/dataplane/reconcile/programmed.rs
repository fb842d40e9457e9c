//! What the maps hold, in kernel terms: the other side of every diff.
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::{Frontend4, Service, ServiceName, SlotKey};

use super::{
    encode::set_key_of,
    family::{KernelFamily, KernelRange},
    ServiceMaps,
};
use crate::model::SetKey;

/// A backend set as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedSet {
    /// `None` for a set without a readable name (left by something else): it is removed.
    pub key: Option<SetKey>,
    pub service: Service,
    pub slots: Vec<u32>,
}

/// The agent-owned maps' contents of one family, in kernel terms: its frontends, backends and
/// ranges, and the sets in its id range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed<A: KernelFamily = Ipv4Addr> {
    pub frontends: HashMap<A::FrontendKey, Frontend4>,
    pub sets: HashMap<u32, ProgrammedSet>,
    pub backends: HashMap<u32, A::Backend>,
    /// loadBalancerSourceRanges by frontend stats id (sorted), for frontends flagged
    /// `FE_F_SOURCE_RANGES`.
    pub ranges: HashMap<u32, Vec<KernelRange<A>>>,
    /// Slots no set shows (of a missing set, or beyond its count): left by a removal that
    /// failed half-way. Invisible to packets; the next apply removes them.
    pub orphan_slots: Vec<SlotKey>,
}

impl<A: KernelFamily> Default for Programmed<A> {
    fn default() -> Self {
        Programmed {
            frontends: HashMap::new(),
            sets: HashMap::new(),
            backends: HashMap::new(),
            ranges: HashMap::new(),
            orphan_slots: Vec::new(),
        }
    }
}

impl<A: KernelFamily> Programmed<A> {
    /// Take the frontend at `key` as `from` holds it, with its source ranges.
    pub(super) fn copy_frontend(&mut self, from: &Programmed<A>, key: &A::FrontendKey) {
        let fe = from.frontends[key];
        self.frontends.insert(*key, fe);
        if let Some(ranges) = from.ranges.get(&fe.stats_id) {
            self.ranges.insert(fe.stats_id, ranges.clone());
        }
    }

    /// Every (stats id, range) this holds that `other` does not.
    pub(super) fn ranges_not_in<'a>(
        &'a self,
        other: &'a Programmed<A>,
    ) -> impl Iterator<Item = (u32, KernelRange<A>)> + 'a {
        self.ranges.iter().flat_map(move |(id, ranges)| {
            let theirs = other.ranges.get(id).map_or(&[][..], Vec::as_slice);
            ranges
                .iter()
                .filter(move |r| !theirs.contains(r))
                .map(move |r| (*id, *r))
        })
    }

    /// Read what the maps hold now (after a restart, or to find drift).
    pub fn read(maps: &impl ServiceMaps<A>) -> Result<Self> {
        let ours = |id: &u32| A::IDS.contains(id);
        let names: HashMap<u32, ServiceName> = maps
            .service_names()?
            .into_iter()
            .filter(|(id, _)| ours(id))
            .collect();
        let mut slots: BTreeMap<SlotKey, u32> = maps
            .slots()?
            .into_iter()
            .filter(|(k, _)| ours(&k.service_id))
            .collect();
        let mut sets = HashMap::new();
        for (id, service) in maps.services()?.into_iter().filter(|(id, _)| ours(id)) {
            let shown = (0..service.backend_count).map(|slot| SlotKey {
                service_id: id,
                slot,
            });
            let found: Option<Vec<u32>> = shown.map(|k| slots.remove(&k)).collect();
            // A slot missing while the agent rewrites the set: read it as it will be.
            let set = ProgrammedSet {
                key: names.get(&id).and_then(set_key_of),
                service: Service {
                    backend_count: 0,
                    ..service
                },
                slots: found.unwrap_or_default(),
            };
            sets.insert(id, set);
        }
        // A name whose set is gone (deleted by hand, or a crash between the two removals) still
        // reserves its id for its key, so the set comes back under the same id.
        for (id, name) in &names {
            if !sets.contains_key(id) {
                let set = ProgrammedSet {
                    key: set_key_of(name),
                    service: Service::default(),
                    slots: Vec::new(),
                };
                sets.insert(*id, set);
            }
        }
        Ok(Programmed {
            frontends: maps.frontends()?.into_iter().collect(),
            sets,
            backends: maps.backends()?.into_iter().collect(),
            ranges: maps.source_ranges()?.into_iter().collect(),
            orphan_slots: slots.into_keys().collect(),
        })
    }
}
