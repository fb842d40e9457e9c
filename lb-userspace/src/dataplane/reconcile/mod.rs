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
mod family;
mod ids;
mod index;
mod plan;
mod programmed;
mod service_maps;
#[cfg(test)]
mod tests;
mod write;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;

pub(super) use encode::copy_padded;
use encode::kernel_addr;
pub use encode::{frontend_key, service_name_of, set_key_of, Code};
pub use family::{AffinityClient, KernelFamily, KernelRange};
use ids::Cursors;
use index::Index;
use plan::{Planner, Room};
pub use programmed::{Programmed, ProgrammedSet};
pub use service_maps::{DualMaps, ServiceMaps, Write};
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
    /// This report's counts, refusals and errors with `other`'s (both families' applies).
    pub fn and(mut self, other: Report) -> Report {
        self.frontends_written += other.frontends_written;
        self.frontends_removed += other.frontends_removed;
        self.sets_written += other.sets_written;
        self.sets_removed += other.sets_removed;
        self.backends_written += other.backends_written;
        self.backends_removed += other.backends_removed;
        self.refused.extend(other.refused);
        self.errors.extend(other.errors);
        self
    }

    /// This apply and a `next` one of the same family: what `next` left refused stands.
    fn then(mut self, next: Report) -> Report {
        self.refused.clear();
        self.and(next)
    }

    pub fn writes(&self) -> usize {
        self.frontends_written
            + self.frontends_removed
            + self.sets_written
            + self.sets_removed
            + self.backends_written
            + self.backends_removed
    }
}

/// Both families' maps, each kept by its own half: a dual-stack Service is two independent sets
/// of entries, as kube-proxy runs a proxier per family.
pub struct Reconciler {
    caps: Capacities,
    /// Stats ids, shared by both families' frontends (one counters array).
    stats: Stats,
    v4: Half<Ipv4Addr>,
    v6: Half<Ipv6Addr>,
}

/// The stats ids in use (by the maps or the plan under way), and where the next search starts.
#[derive(Default)]
pub struct Stats {
    cursor: u32,
    used: HashSet<u32>,
}

/// What the reconciler keeps of one family.
pub struct Half<A: KernelFamily> {
    current: Programmed<A>,
    cursors: Cursors,
    index: Index<A>,
    /// Services refused by the last apply, with the frontends they win: every apply tries them
    /// again, changed or not, since room may have been made.
    refused: HashMap<ObjectRef, Vec<FrontendKey<A>>>,
    /// A write failed: the next apply plans every service and checks every affinity entry.
    recovering: bool,
}

/// The families a [`Reconciler`] serves: which half is whose.
pub trait Served: KernelFamily {
    fn half(rec: &Reconciler) -> &Half<Self>;
    fn half_mut(rec: &mut Reconciler) -> (&mut Half<Self>, &mut Stats);
}

impl Served for Ipv4Addr {
    fn half(rec: &Reconciler) -> &Half<Self> {
        &rec.v4
    }

    fn half_mut(rec: &mut Reconciler) -> (&mut Half<Self>, &mut Stats) {
        (&mut rec.v4, &mut rec.stats)
    }
}

impl Served for Ipv6Addr {
    fn half(rec: &Reconciler) -> &Half<Self> {
        &rec.v6
    }

    fn half_mut(rec: &mut Reconciler) -> (&mut Half<Self>, &mut Stats) {
        (&mut rec.v6, &mut rec.stats)
    }
}

impl<A: KernelFamily> Half<A> {
    fn adopt(current: Programmed<A>) -> Self {
        // Continue after the highest ids in use: an id freed just before a restart is not
        // handed out again at once (stale references to it may still be around).
        let cursors = Cursors {
            set: current.sets.keys().max().copied().unwrap_or(0),
            backend: current.backends.keys().max().copied().unwrap_or(0),
        };
        Half {
            index: Index::of(&current),
            current,
            cursors,
            refused: HashMap::new(),
            recovering: false,
        }
    }

    fn stats_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.current.frontends.values().map(|f| f.stats_id)
    }
}

impl Reconciler {
    /// Start from what the maps hold (a previous agent's work is adopted, not redone).
    pub fn adopt(maps: &impl DualMaps, caps: Capacities) -> Result<Self> {
        let v4 = Half::adopt(Programmed::read(maps)?);
        let v6 = Half::adopt(Programmed::read(maps)?);
        let used: HashSet<u32> = v4.stats_ids().chain(v6.stats_ids()).collect();
        let stats = Stats {
            cursor: used.iter().max().copied().unwrap_or(0),
            used,
        };
        Ok(Reconciler {
            caps,
            stats,
            v4,
            v6,
        })
    }

    pub fn programmed<A: Served>(&self) -> &Programmed<A> {
        &A::half(self).current
    }

    /// Re-read the maps: true when they differ from what this reconciler wrote (changed behind
    /// its back), and the next apply must then be whole to repair them. Without drift nothing
    /// is rebuilt, so the periodic check costs a read of the maps, not a plan of every service.
    pub fn resync(&mut self, maps: &impl DualMaps) -> Result<bool> {
        let v4 = self.resync_half::<Ipv4Addr>(maps)?;
        let v6 = self.resync_half::<Ipv6Addr>(maps)?;
        Ok(v4 || v6)
    }

    fn resync_half<A: Served>(&mut self, maps: &impl ServiceMaps<A>) -> Result<bool> {
        let read = Programmed::read(maps)?;
        if read == A::half(self).current {
            return Ok(false);
        }
        self.believe(read);
        Ok(true)
    }

    /// Take `read` as what the maps hold of family `A`, and rebuild what derives from it.
    fn believe<A: Served>(&mut self, read: Programmed<A>) {
        let (half, _) = A::half_mut(self);
        half.index = Index::of(&read);
        half.current = read;
        let used = self.v4.stats_ids().chain(self.v6.stats_ids()).collect();
        self.stats.used = used;
    }

    /// The room family `A` has in the shared maps: what the other family leaves.
    fn room<A: Served>(&self) -> Room {
        let ours = A::half(self);
        let (v4, v6) = (&self.v4, &self.v6);
        Room {
            caps: self.caps,
            other_sets: v4.current.sets.len() + v6.current.sets.len() - ours.current.sets.len(),
            other_slots: v4.index.slots + v6.index.slots - ours.index.slots,
        }
    }

    /// Make the maps hold `desired` and nothing else for its family (cold start, after a
    /// resync).
    pub fn apply<A: Served>(
        &mut self,
        maps: &mut impl ServiceMaps<A>,
        desired: &Desired<A>,
    ) -> Report {
        let report = self.apply_whole(maps, desired);
        self.admit_freed(maps, desired, report)
    }

    /// Bring the maps from the last applied `Desired` to `desired`, which differs from it only
    /// as `changes` says: only the changed services' entries are planned and written.
    pub fn apply_changes<A: Served>(
        &mut self,
        maps: &mut impl ServiceMaps<A>,
        desired: &Desired<A>,
        changes: &Changes<A>,
    ) -> Report {
        let report = match A::half(self).recovering {
            true => self.apply_whole(maps, desired),
            false => self.apply_only(maps, desired, changes),
        };
        self.admit_freed(maps, desired, report)
    }

    /// Entries an apply removed (and the stats ids they held) are free only once it is written:
    /// a service refused meanwhile gets its second try at once, not at the next event.
    fn admit_freed<A: Served>(
        &mut self,
        maps: &mut impl ServiceMaps<A>,
        desired: &Desired<A>,
        report: Report,
    ) -> Report {
        let removed = report.frontends_removed + report.sets_removed + report.backends_removed;
        if report.refused.is_empty() || removed == 0 || !report.errors.is_empty() {
            return report;
        }
        let retry = self.apply_only(maps, desired, &Changes::default());
        report.then(retry)
    }

    fn apply_whole<A: Served>(
        &mut self,
        maps: &mut impl ServiceMaps<A>,
        desired: &Desired<A>,
    ) -> Report {
        let mut report = Report::default();
        let room = self.room::<A>();
        let (half, stats) = A::half_mut(self);
        // The index always describes `current` (adopt, resync and every apply keep it so).
        let mut index = std::mem::take(&mut half.index);
        // Planned from nothing: no usage counts, every service programmed anew.
        let previous = std::mem::take(&mut index.services);
        index.backend_refs.clear();
        index.slots = 0;
        let mut frontends: HashMap<&ObjectRef, Vec<FrontendKey<A>>> = HashMap::new();
        for (key, fe) in &desired.frontends {
            frontends.entry(&fe.set.service).or_default().push(*key);
        }
        let mut plan = Planner::new((half, stats, room), &mut index, desired, 0);
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
        let (half, _) = A::half_mut(self);
        half.refused = refused;
        // After a failure, affinity entries a failed purge left are found by checking them all
        // against the whole target (an ordinary apply removes those of the pairs it changes).
        let affinities = match half.recovering {
            true => Affinities::AllAgainstTarget,
            false => Affinities::OfChangedPairs,
        };
        write_diff(maps, &half.current, &target, affinities, &mut report);
        if report.errors.is_empty() {
            half.recovering = false;
            // The plan's index already holds the target; only what went away is forgotten
            // (rebuilding it would cost as much again as the plan at 50,000 services).
            half.index = index;
            let before = std::mem::take(&mut half.current);
            self.merge(before, target);
        } else {
            self.recover(maps, &mut report);
        }
        report
    }

    fn apply_only<A: Served>(
        &mut self,
        maps: &mut impl ServiceMaps<A>,
        desired: &Desired<A>,
        changes: &Changes<A>,
    ) -> Report {
        let mut report = Report::default();
        let room = self.room::<A>();
        let (half, stats) = A::half_mut(self);
        let mut index = std::mem::take(&mut half.index);
        let frontends = half.current.frontends.len();
        let mut services = std::mem::take(&mut half.refused);
        services.extend(changes.services.iter().map(|(s, f)| (s.clone(), f.clone())));
        let mut plan = Planner::new((half, stats, room), &mut index, desired, frontends);
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
        let (half, _) = A::half_mut(self);
        half.refused = refused;
        half.fill_before(&mut before, &target, &touched);
        write_diff(
            maps,
            &before,
            &target,
            Affinities::OfChangedPairs,
            &mut report,
        );
        if report.errors.is_empty() {
            half.index = index;
            self.merge(before, target);
        } else {
            self.recover(maps, &mut report);
        }
        report
    }

    /// Some writes failed (the write order kept every reference the maps hold whole): believe
    /// the maps, and plan the next apply whole so that it retries whatever is not done.
    fn recover<A: Served>(&mut self, maps: &impl ServiceMaps<A>, report: &mut Report) {
        let read = match Programmed::read(maps) {
            Ok(read) => read,
            // Then the next resync reads them; meanwhile the whole apply rewrites more.
            Err(e) => {
                report.errors.push(format!("reading the maps back: {e:#}"));
                std::mem::take(&mut A::half_mut(self).0.current)
            }
        };
        self.believe(read);
        A::half_mut(self).0.recovering = true;
    }

    /// Apply a written diff to family `A`'s `current`, its index and the stats ids.
    fn merge<A: Served>(&mut self, mut before: Programmed<A>, target: Programmed<A>) {
        before
            .frontends
            .retain(|k, _| !target.frontends.contains_key(k));
        let (half, stats) = A::half_mut(self);
        for fe in before.frontends.values() {
            stats.used.remove(&fe.stats_id);
        }
        half.merge(before, target);
    }
}

impl<A: KernelFamily> Half<A> {
    /// What the maps hold now for each entry the target names: the other side of the diff.
    fn fill_before(&self, before: &mut Programmed<A>, target: &Programmed<A>, touched: &[u32]) {
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

    /// Apply a written diff (whose `before` holds no frontend the target keeps) to `current`
    /// and the index.
    fn merge(&mut self, mut before: Programmed<A>, target: Programmed<A>) {
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
