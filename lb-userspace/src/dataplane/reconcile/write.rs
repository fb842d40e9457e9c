//! The order of map writes: what keeps packets safe while the maps change.
//!
//! A packet follows frontend → set (its count, then one slot below it) → backend, and a
//! frontend flagged for source ranges → its ranges. So a diff is written as:
//! 1. frontends that go away (nothing reaches their sets through them any more);
//! 2. new and changed backends, before any slot names them;
//! 3. new and changed sets: the name, the slots, then the count that makes them visible, then
//!    the slots beyond it;
//! 4. source ranges a frontend gains, then new and changed frontends (their sets and ranges are
//!    complete now), then the ranges no frontend has any more;
//! 5. sets no frontend points to, slots no set shows, and the session-affinity entries of the
//!    (set, backend) pairs that went away;
//! 6. backends no slot names.
//!
//! A packet therefore never meets a frontend whose set is missing, nor a slot whose backend is
//! missing, nor a frontend without the ranges it filters on. When a write fails, nothing that
//! depends on it is written and nothing still referred to is removed: a set whose backend failed
//! is not rewritten, a frontend whose set or range failed keeps its old entry, and that old entry
//! keeps its set, its ranges and (through the set) its backends. The maps stay whole, and the
//! reconciler's next apply finishes the job.
use std::collections::{BTreeSet, HashSet};

use anyhow::Result;

use lb_common::Frontend4;

use super::{
    encode::service_name_of,
    family::KernelFamily,
    programmed::{Programmed, ProgrammedSet},
    Report, ServiceMaps, Write,
};

/// Which session-affinity entries a diff checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinities {
    /// Those of the (set, backend) pairs the diff removes: what an ordinary apply needs.
    OfChangedPairs,
    /// Every entry, against the target as the whole state (after a failed write, when the pairs
    /// a failed purge left are no longer known).
    AllAgainstTarget,
}

/// What the maps still hold of `cur` because a write failed or was held back.
#[derive(Default)]
struct Held {
    /// Sets a frontend in the maps still points to.
    sets: HashSet<u32>,
    /// Backends a set in the maps may still name.
    backends: HashSet<u32>,
    /// Stats ids whose frontend entry was not rewritten (its ranges stay).
    frontends: HashSet<u32>,
}

impl Held {
    /// A set `cur` has, written or not: its old and new slots may both be in the maps.
    fn set<A: KernelFamily>(&mut self, id: u32, cur: &Programmed<A>, target: &Programmed<A>) {
        for p in [cur, target] {
            if let Some(set) = p.sets.get(&id) {
                self.backends.extend(&set.slots);
            }
        }
    }
}

pub(super) fn write_diff<A: KernelFamily>(
    maps: &mut impl ServiceMaps<A>,
    cur: &Programmed<A>,
    target: &Programmed<A>,
    affinities: Affinities,
    report: &mut Report,
) {
    let mut errors = Vec::new();
    let mut fail = |what: anyhow::Error| errors.push(format!("{what:#}"));
    let mut held = Held::default();
    // 1. Frontends that go away.
    for (key, fe) in cur
        .frontends
        .iter()
        .filter(|(k, _)| !target.frontends.contains_key(k))
    {
        match maps.remove_frontend(key) {
            Ok(()) => report.frontends_removed += 1,
            Err(e) => {
                held.sets.insert(fe.service_id);
                held.frontends.insert(fe.stats_id);
                fail(e)
            }
        }
    }
    // 2. New and changed backends.
    let mut failed_backends = HashSet::new();
    for (id, be) in &target.backends {
        if cur.backends.get(id) != Some(be) {
            match maps.set_backend(*id, be) {
                Ok(()) => report.backends_written += 1,
                Err(e) => {
                    failed_backends.insert(*id);
                    fail(e)
                }
            }
        }
    }
    // 3. New and changed sets, unless a backend they need is missing.
    let mut failed_sets = HashSet::new();
    for (id, set) in &target.sets {
        let old = cur.sets.get(id);
        if old == Some(set) {
            continue;
        }
        let result = match set.slots.iter().any(|b| failed_backends.contains(b)) {
            true => Ok(false),
            false => write_set(maps, *id, old, set).map(|()| true),
        };
        match result {
            Ok(true) => report.sets_written += 1,
            Ok(false) | Err(_) => {
                failed_sets.insert(*id);
                held.set(*id, cur, target);
            }
        }
        if let Err(e) = result {
            fail(e)
        }
    }
    // 4a. Source ranges a frontend gains.
    let mut failed_ranges = HashSet::new();
    for (stats_id, range) in target.ranges_not_in(cur) {
        if let Err(e) = maps.write(&Write::SourceRange(stats_id, range)) {
            failed_ranges.insert(stats_id);
            fail(e);
        }
    }
    // 4. New and changed frontends.
    for (key, fe) in &target.frontends {
        let old = cur.frontends.get(key);
        if old == Some(fe) {
            continue;
        }
        let ready = !failed_sets.contains(&fe.service_id) && !failed_ranges.contains(&fe.stats_id);
        let result = match ready {
            true => write_frontend(maps, key, fe, old).map(|()| true),
            false => Ok(false),
        };
        match result {
            Ok(true) => report.frontends_written += 1,
            Ok(false) | Err(_) => {
                if let Some(old) = old {
                    held.sets.insert(old.service_id);
                    held.frontends.insert(old.stats_id);
                }
            }
        }
        if let Err(e) = result {
            fail(e)
        }
    }
    // 4b. Source ranges no frontend has any more.
    for (stats_id, range) in cur.ranges_not_in(target) {
        if held.frontends.contains(&stats_id) {
            continue;
        }
        if let Err(e) = maps.write(&Write::RemoveSourceRange(stats_id, range)) {
            fail(e);
        }
    }
    // 5. Sets no frontend points to, slots no set shows, stale affinity entries.
    for id in cur.sets.keys().filter(|id| !target.sets.contains_key(id)) {
        if held.sets.contains(id) {
            held.set(*id, cur, target);
            continue;
        }
        match maps.remove_named_service(*id) {
            Ok(()) => report.sets_removed += 1,
            Err(e) => {
                held.set(*id, cur, target);
                fail(e)
            }
        }
    }
    for key in &cur.orphan_slots {
        // The set may be back (rewritten in step 3 under the same id): its slots stay.
        let shown = target.sets.get(&key.service_id);
        if shown.is_some_and(|s| (key.slot as usize) < s.slots.len()) {
            continue;
        }
        if let Err(e) = maps.write(&Write::RemoveSlot(*key)) {
            fail(e);
        }
    }
    if let Err(e) = purge_affinities(maps, cur, target, affinities) {
        fail(e);
    }
    // 6. Backends no slot names.
    for id in cur.backends.keys() {
        if target.backends.contains_key(id) || held.backends.contains(id) {
            continue;
        }
        match maps.write(&Write::RemoveBackend(*id)) {
            Ok(()) => report.backends_removed += 1,
            Err(e) => fail(e),
        }
    }
    report.errors.extend(errors);
}

fn write_set<A: KernelFamily>(
    maps: &mut impl ServiceMaps<A>,
    id: u32,
    old: Option<&ProgrammedSet>,
    set: &ProgrammedSet,
) -> Result<()> {
    if old.map(|o| &o.key) != Some(&set.key) {
        if let Some(key) = &set.key {
            maps.write(&Write::Name(id, service_name_of(key)))?;
        }
    }
    let previous = old.map_or(0, |o| o.slots.len() as u32);
    maps.set_service(id, &set.service, &set.slots, previous)
}

/// A frontend entry; a stats id new to this entry starts from zeroed counters.
fn write_frontend<A: KernelFamily>(
    maps: &mut impl ServiceMaps<A>,
    key: &A::FrontendKey,
    fe: &Frontend4,
    old: Option<&Frontend4>,
) -> Result<()> {
    if old.is_none_or(|o| o.stats_id != fe.stats_id) {
        maps.write(&Write::ResetCounters(fe.stats_id))?;
    }
    maps.set_frontend(key, fe)
}

/// Remove the session-affinity entries a client must no longer stick to: those of a removed
/// set, or of a backend that left its set (it may still exist for another service, or while
/// terminating).
fn purge_affinities<A: KernelFamily>(
    maps: &mut impl ServiceMaps<A>,
    cur: &Programmed<A>,
    target: &Programmed<A>,
    affinities: Affinities,
) -> Result<()> {
    let stale: Box<dyn Fn(u32, u32) -> bool> = match affinities {
        Affinities::OfChangedPairs => {
            let pairs = stale_pairs(cur, target);
            if pairs.is_empty() {
                return Ok(());
            }
            Box::new(move |set, backend| pairs.contains(&(set, backend)))
        }
        Affinities::AllAgainstTarget => Box::new(|set, backend| {
            !target
                .sets
                .get(&set)
                .is_some_and(|s| s.slots.contains(&backend))
        }),
    };
    for (key, entry) in maps.affinity()? {
        let (set, backend) = A::affinity_pair(&key, &entry);
        if stale(set, backend) {
            maps.write(&Write::RemoveAffinity(key))?;
        }
    }
    Ok(())
}

/// (set, backend) pairs whose affinity entries must go: every pair of a removed set, and a
/// backend that left a set.
fn stale_pairs<A: KernelFamily>(
    cur: &Programmed<A>,
    target: &Programmed<A>,
) -> BTreeSet<(u32, u32)> {
    let mut stale = BTreeSet::new();
    for (id, old) in &cur.sets {
        let new: HashSet<u32> = target
            .sets
            .get(id)
            .map(|s| s.slots.iter().copied().collect())
            .unwrap_or_default();
        // A removed set has no new slots: all its pairs are stale.
        stale.extend(
            old.slots
                .iter()
                .filter(|b| !new.contains(b))
                .map(|b| (*id, *b)),
        );
    }
    stale
}
