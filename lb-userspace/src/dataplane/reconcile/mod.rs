//! Keep the kernel maps equal to a [`Desired`] state by writing only the difference.
//!
//! One concept per file:
//! - [`programmed`]: what the maps hold, read back in kernel terms (the other side of a diff);
//! - [`index`]: lookups over it, kept alongside so that one service's change costs its entries;
//! - [`plan`] and [`ids`]: the next entries of the services planned, with their ids and room;
//! - [`encode`]: model types as map keys and values;
//! - [`write`]: the order of the writes, which is what keeps packets safe (documented there);
//! - [`service_maps`]: the maps behind a trait; [`fake`]: in memory, checked after every write,
//!   and a wrapper that fails chosen writes.
//!
//! Ids are stable: a backend keeps its id while its address and port stay (conntrack entries
//! name backends by id), a set keeps its id while its service port and policy stay, and a
//! frontend keeps its counters. Services that would not fit in the maps are refused whole and
//! keep what they had. When a write fails, the reconciler believes the maps (reads them back)
//! and plans its next apply whole ([`Reconciler::apply_changes`] included), which retries what
//! failed.
mod encode;
pub mod fake;
mod ids;
mod index;
mod plan;
mod programmed;
mod service_maps;
#[cfg(test)]
mod tests;
mod write;

use std::collections::HashMap;

use anyhow::Result;

pub(super) use encode::copy_padded;
use encode::kernel_addr;
pub use encode::{frontend_key, service_name_of, set_key_of, Code};
use ids::Cursors;
use index::Index;
use plan::Planner;
pub use programmed::{Programmed, ProgrammedSet};
pub use service_maps::{ServiceMaps, Write};
use write::{write_diff, Affinities};

use super::maps::Capacities;
use crate::model::{Changes, Desired, FrontendKey, ObjectRef};

/// What one [`Reconciler::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub sets_written: usize,
    pub sets_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    /// Services that did not fit, with the map that was full; they keep their old entries.
    pub refused: Vec<(ObjectRef, &'static str)>,
    /// Map writes that failed.
    pub errors: Vec<String>,
}

impl Report {
    pub fn writes(&self) -> usize {
        self.frontends_written
            + self.frontends_removed
            + self.sets_written
            + self.sets_removed
            + self.backends_written
            + self.backends_removed
    }
}

pub struct Reconciler {
    caps: Capacities,
    current: Programmed,
    cursors: Cursors,
    index: Index,
    /// Services refused by the last apply, with the frontends they win: every apply tries them
    /// again, changed or not, since room may have been made.
    refused: HashMap<ObjectRef, Vec<FrontendKey>>,
    /// A write failed: the next apply plans every service and checks every affinity entry.
    recovering: bool,
}

impl Reconciler {
    /// Start from what the maps hold (a previous agent's work is adopted, not redone).
    pub fn adopt(maps: &impl ServiceMaps, caps: Capacities) -> Result<Self> {
        let current = Programmed::read(maps)?;
        // Continue after the highest ids in use: an id freed just before a restart is not
        // handed out again at once (stale references to it may still be around).
        let cursors = Cursors {
            set: current.sets.keys().max().copied().unwrap_or(0),
            backend: current.backends.keys().max().copied().unwrap_or(0),
            stats: current
                .frontends
                .values()
                .map(|f| f.stats_id)
                .max()
                .unwrap_or(0),
        };
        Ok(Reconciler {
            caps,
            index: Index::of(&current),
            current,
            cursors,
            refused: HashMap::new(),
            recovering: false,
        })
    }

    pub fn programmed(&self) -> &Programmed {
        &self.current
    }

    /// Re-read the maps: true when they differ from what this reconciler wrote (changed behind
    /// its back), and the next apply must then be whole to repair them. Without drift nothing
    /// is rebuilt, so the periodic check costs a read of the maps, not a plan of every service.
    pub fn resync(&mut self, maps: &impl ServiceMaps) -> Result<bool> {
        let read = Programmed::read(maps)?;
        if read == self.current {
            return Ok(false);
        }
        self.current = read;
        self.index = Index::of(&self.current);
        Ok(true)
    }

    /// Make the maps hold `desired` and nothing else (cold start, after a resync).
    pub fn apply(&mut self, maps: &mut impl ServiceMaps, desired: &Desired) -> Report {
        let mut report = Report::default();
        // The index always describes `current` (adopt, resync and every apply keep it so).
        let mut index = std::mem::take(&mut self.index);
        // Planned from nothing: no usage counts, every service programmed anew.
        let previous = std::mem::take(&mut index.services);
        index.backend_refs.clear();
        index.slots = 0;
        let mut frontends: HashMap<&ObjectRef, Vec<FrontendKey>> = HashMap::new();
        for (key, fe) in &desired.frontends {
            frontends.entry(&fe.set.service).or_default().push(*key);
        }
        let mut plan = Planner::new(self, &mut index, desired, 0);
        let services = desired.services().into_iter();
        let services = services.map(|s| (s, frontends.remove(s).unwrap_or_default()));
        let refused = plan.admit_in_order(services, previous, &mut report);
        let addrs: Vec<_> = plan
            .index
            .backend_ids
            .iter()
            .map(|(a, id)| (*id, *a))
            .collect();
        plan.touched.extend(addrs);
        let (target, _) = plan.finish();
        self.refused = refused;
        // After a failure, affinity entries a failed purge left are found by checking them all
        // against the whole target (an ordinary apply removes those of the pairs it changes).
        let affinities = match self.recovering {
            true => Affinities::AllAgainstTarget,
            false => Affinities::OfChangedPairs,
        };
        write_diff(maps, &self.current, &target, affinities, &mut report);
        if report.errors.is_empty() {
            self.recovering = false;
            // The plan's index already holds the target; only what went away is forgotten
            // (rebuilding it would cost as much again as the plan at 50,000 services).
            self.index = index;
            let before = std::mem::take(&mut self.current);
            self.merge(before, target);
        } else {
            self.recover(maps, &mut report);
        }
        report
    }

    /// Bring the maps from the last applied `Desired` to `desired`, which differs from it only
    /// as `changes` says: only the changed services' entries are planned and written.
    pub fn apply_changes(
        &mut self,
        maps: &mut impl ServiceMaps,
        desired: &Desired,
        changes: &Changes,
    ) -> Report {
        if self.recovering {
            return self.apply(maps, desired);
        }
        let mut report = Report::default();
        let mut index = std::mem::take(&mut self.index);
        let frontends = self.current.frontends.len();
        let mut services = std::mem::take(&mut self.refused);
        services.extend(changes.services.iter().map(|(s, f)| (s.clone(), f.clone())));
        let mut plan = Planner::new(self, &mut index, desired, frontends);
        let mut previous = HashMap::new();
        let mut before = Programmed::default();
        for service in services.keys() {
            if let Some(owned) = plan.release(service, &mut before) {
                previous.insert(service.clone(), owned);
            }
        }
        let services = services.iter().map(|(s, f)| (s, f.clone()));
        let refused = plan.admit_in_order(services, previous, &mut report);
        for addr in &changes.retained {
            if let Some(id) = plan.index.backend_ids.get(&kernel_addr(addr)) {
                plan.touched.insert(*id, kernel_addr(addr));
            }
        }
        let (target, touched) = plan.finish();
        self.refused = refused;
        self.fill_before(&mut before, &target, &touched);
        write_diff(
            maps,
            &before,
            &target,
            Affinities::OfChangedPairs,
            &mut report,
        );
        if report.errors.is_empty() {
            self.index = index;
            self.merge(before, target);
        } else {
            self.recover(maps, &mut report);
        }
        report
    }

    /// Some writes failed (the write order kept every reference the maps hold whole): believe
    /// the maps, and plan the next apply whole so that it retries whatever is not done.
    fn recover(&mut self, maps: &impl ServiceMaps, report: &mut Report) {
        match Programmed::read(maps) {
            Ok(read) => self.current = read,
            // Then the next resync reads them; meanwhile the whole apply rewrites more.
            Err(e) => report.errors.push(format!("reading the maps back: {e:#}")),
        }
        self.index = Index::of(&self.current);
        self.recovering = true;
    }

    /// What the maps hold now for each entry the target names: the other side of the diff.
    fn fill_before(&self, before: &mut Programmed, target: &Programmed, touched: &[u32]) {
        let cur = &self.current;
        for id in touched {
            if let Some(b) = cur.backends.get(id) {
                before.backends.insert(*id, *b);
            }
        }
        for key in target.frontends.keys() {
            if cur.frontends.contains_key(key) && !before.frontends.contains_key(key) {
                before.copy_frontend(cur, key);
            }
        }
    }

    /// Apply a written diff to `current` and the index.
    fn merge(&mut self, mut before: Programmed, target: Programmed) {
        before
            .frontends
            .retain(|k, _| !target.frontends.contains_key(k));
        before.sets.retain(|id, _| !target.sets.contains_key(id));
        before
            .backends
            .retain(|id, _| !target.backends.contains_key(id));
        before
            .ranges
            .retain(|id, _| !target.ranges.contains_key(id));
        let cur = &mut self.current;
        for id in before.ranges.keys() {
            cur.ranges.remove(id);
        }
        for key in before.frontends.keys() {
            cur.frontends.remove(key);
        }
        for id in before.sets.keys() {
            cur.sets.remove(id);
        }
        for id in before.backends.keys() {
            cur.backends.remove(id);
        }
        self.index.forget(&before);
        cur.frontends.extend(target.frontends);
        cur.sets.extend(target.sets);
        cur.backends.extend(target.backends);
        cur.ranges.extend(target.ranges);
    }
}
