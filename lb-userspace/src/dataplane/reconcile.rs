//! Keep the kernel maps equal to a [`Desired`] state by writing only the difference.
//!
//! The order of writes is what keeps packets safe while the maps change:
//! 1. frontends that go away, then the backend sets only they used (and their affinity entries);
//! 2. new and changed backends, then backend sets (slots before the count), then a frontend's
//!    source ranges, then frontends (ranges a frontend no longer has go after it);
//! 3. backends nothing refers to any more.
//!
//! A packet therefore never meets a frontend whose set is missing, nor a slot whose backend is
//! missing. Ids are stable: a backend keeps its id while its address and port stay (conntrack
//! entries name backends by id), a set keeps its id while its service port and policy stay, and
//! a frontend keeps its counters. Services that would not fit in the maps are refused whole and
//! keep what they had.
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::{
    Backend4, Frontend4, Frontend4Key, Service, ServiceName, BE_F_LOCAL, BE_F_TERMINATING,
    FE_F_SOURCE_RANGES, SVC_F_AFFINITY, SVC_F_EXT_LOCAL, SVC_F_INT_LOCAL, VERDICT_DROP,
    VERDICT_REJECT,
};

use super::maps::{entries, Capacities, KernelRange, Maps};
use crate::model::{
    set_range, BackendSet, Changes, Desired, FrontendKey, ObjectRef, Policy, Protocol, SetKey,
    Verdict,
};

/// A backend set as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedSet {
    /// `None` for a set without a readable name (left by something else): it is removed.
    pub key: Option<SetKey>,
    pub service: Service,
    pub slots: Vec<u32>,
}

/// The agent-owned maps' contents, in kernel terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub frontends: HashMap<Frontend4Key, Frontend4>,
    pub sets: HashMap<u32, ProgrammedSet>,
    pub backends: HashMap<u32, Backend4>,
    /// loadBalancerSourceRanges by frontend stats id (sorted), for frontends flagged
    /// `FE_F_SOURCE_RANGES`.
    pub ranges: HashMap<u32, Vec<KernelRange>>,
}

impl Programmed {
    /// Take the frontend at `key` as `from` holds it, with its source ranges.
    fn copy_frontend(&mut self, from: &Programmed, key: &Frontend4Key) {
        let fe = from.frontends[key];
        self.frontends.insert(*key, fe);
        if let Some(ranges) = from.ranges.get(&fe.stats_id) {
            self.ranges.insert(fe.stats_id, ranges.clone());
        }
    }

    /// Every (stats id, range) this holds that `other` does not.
    fn ranges_not_in<'a>(
        &'a self,
        other: &'a Programmed,
    ) -> impl Iterator<Item = (u32, KernelRange)> + 'a {
        self.ranges.iter().flat_map(move |(id, ranges)| {
            let theirs = other.ranges.get(id).map_or(&[][..], Vec::as_slice);
            ranges
                .iter()
                .filter(move |r| !theirs.contains(r))
                .map(move |r| (*id, *r))
        })
    }

    /// Read what the maps hold now (after a restart, or to find drift).
    pub fn read(maps: &Maps) -> Result<Self> {
        let names: HashMap<u32, ServiceName> = entries(&maps.service_names)?.into_iter().collect();
        let mut sets = HashMap::new();
        for (id, service) in entries(&maps.services)? {
            // A slot missing while the agent rewrites the set: read it as it will be.
            let slots = maps.service_backends(id).unwrap_or_default();
            let key = names.get(&id).and_then(set_key_of);
            let set = ProgrammedSet {
                key,
                service: Service {
                    backend_count: 0,
                    ..service
                },
                slots,
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
            frontends: entries(&maps.frontends)?.into_iter().collect(),
            sets,
            backends: entries(&maps.backends)?.into_iter().collect(),
            ranges: maps.source_ranges()?.into_iter().collect(),
        })
    }
}

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
}

/// Where the next id search starts: ids are not reused right away, so a stale reference (a
/// conntrack entry, an affinity entry) rarely meets a new owner of its id.
#[derive(Default)]
struct Cursors {
    set: u32,
    backend: u32,
    stats: u32,
}

/// Lookups derived from [`Programmed`], kept alongside it so that planning one service's change
/// costs that service's entries, not the whole maps.
#[derive(Default)]
struct Index {
    set_ids: HashMap<SetKey, u32>,
    backend_ids: HashMap<(u32, u16), u32>,
    /// Ids taken, in the maps or by the plan under way.
    sets_used: HashSet<u32>,
    backends_used: HashSet<u32>,
    stats_used: HashSet<u32>,
    /// What each service has in the maps.
    services: HashMap<ObjectRef, Owned>,
    /// How many slots name each backend.
    backend_refs: HashMap<u32, u32>,
    slots: u64,
}

/// One service's entries in the maps.
#[derive(Clone, Debug, Default)]
struct Owned {
    sets: Vec<u32>,
    frontends: Vec<Frontend4Key>,
}

impl Index {
    fn of(p: &Programmed) -> Self {
        let mut index = Index {
            backend_ids: p
                .backends
                .iter()
                .map(|(id, b)| ((b.addr, b.port), *id))
                .collect(),
            sets_used: p.sets.keys().copied().chain([0]).collect(),
            backends_used: p.backends.keys().copied().chain([0]).collect(),
            stats_used: p.frontends.values().map(|f| f.stats_id).collect(),
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

    fn owned(&mut self, service: &ObjectRef) -> &mut Owned {
        self.services.entry(service.clone()).or_default()
    }

    /// Add (`by` = 1) or take away (`by` = -1) a set's slots from the reference counts.
    fn count_slots(&mut self, slots: &[u32], by: i64) {
        for b in slots {
            let refs = self.backend_refs.entry(*b).or_default();
            *refs = (*refs as i64 + by) as u32;
        }
        self.slots = (self.slots as i64 + by * slots.len() as i64) as u64;
    }

    /// Forget entries the maps no longer hold (after an incremental apply).
    fn forget(&mut self, gone: &Programmed) {
        for fe in gone.frontends.values() {
            self.stats_used.remove(&fe.stats_id);
        }
        for (id, set) in &gone.sets {
            if let Some(key) = &set.key {
                self.set_ids.remove(key);
            }
            self.sets_used.remove(id);
        }
        for (id, b) in &gone.backends {
            self.backend_ids.remove(&(b.addr, b.port));
            self.backends_used.remove(id);
            self.backend_refs.remove(id);
        }
    }
}

impl Reconciler {
    /// Start from what the maps hold (a previous agent's work is adopted, not redone).
    pub fn adopt(maps: &Maps, caps: Capacities) -> Result<Self> {
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
        })
    }

    pub fn programmed(&self) -> &Programmed {
        &self.current
    }

    /// Re-read the maps, so the next apply repairs whatever changed behind the agent's back.
    pub fn resync(&mut self, maps: &Maps) -> Result<()> {
        self.current = Programmed::read(maps)?;
        self.index = Index::of(&self.current);
        Ok(())
    }

    /// Make the maps hold `desired` and nothing else (cold start, after a resync).
    pub fn apply(&mut self, maps: &mut Maps, desired: &Desired) -> Report {
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
        write_diff(maps, &self.current, &target, &mut report);
        if report.errors.is_empty() {
            // The plan's index already holds the target; only what went away is forgotten
            // (rebuilding it would cost as much again as the plan at 50,000 services).
            self.index = index;
            let before = std::mem::take(&mut self.current);
            self.merge(before, target);
        } else {
            // Some writes failed: believe the maps, the next apply retries the rest.
            self.current = Programmed::read(maps).unwrap_or(target);
            self.index = Index::of(&self.current);
        }
        report
    }

    /// Bring the maps from the last applied `Desired` to `desired`, which differs from it only
    /// as `changes` says: only the changed services' entries are planned and written.
    pub fn apply_changes(
        &mut self,
        maps: &mut Maps,
        desired: &Desired,
        changes: &Changes,
    ) -> Report {
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
        write_diff(maps, &before, &target, &mut report);
        if report.errors.is_empty() {
            self.index = index;
            self.merge(before, target);
        } else {
            // Some writes failed: believe the maps, the next apply retries the rest.
            if let Ok(read) = Programmed::read(maps) {
                self.current = read;
            }
            self.index = Index::of(&self.current);
        }
        report
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

/// Builds the maps' next entries service by service, allocating ids and counting map usage.
struct Planner<'a> {
    caps: Capacities,
    cursors: &'a mut Cursors,
    current: &'a Programmed,
    index: &'a mut Index,
    desired: &'a Desired,
    /// The planned services' entries (all the maps' on a full apply).
    target: Programmed,
    /// Frontends in the maps once the plan is written.
    frontends: usize,
    /// Sets and backends this plan adds (not in the maps yet).
    fresh_sets: usize,
    fresh_backends: usize,
    /// Backends whose entry the plan decides (kept, changed or removed), by id.
    touched: HashMap<u32, (u32, u16)>,
}

impl<'a> Planner<'a> {
    fn new(
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
    fn release(&mut self, service: &ObjectRef, before: &mut Programmed) -> Option<Owned> {
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
    fn admit_in_order<'s>(
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
            kind: fe.kind.number(),
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
    fn finish(mut self) -> (Programmed, Vec<u32>) {
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

/// Set and backend ids: any u32 would do; this keeps them readable.
const ID_LIMIT: u32 = 1 << 30;

/// The first free id after the cursor (wrapping below `limit`), marked used. Set and backend ids
/// never get 0 because it is marked used from the start (a zeroed entry then never names one).
fn alloc(cursor: &mut u32, limit: u32, used: &mut HashSet<u32>) -> u32 {
    let mut id = *cursor;
    for _ in 0..limit {
        id = if id + 1 >= limit { 0 } else { id + 1 };
        if used.insert(id) {
            *cursor = id;
            return id;
        }
    }
    // Unreachable while the capacity checks hold: there are fewer entries than ids.
    *cursor
}

fn backend_value(addr: (u32, u16), b: &crate::model::Backend) -> Backend4 {
    let mut flags = 0;
    if b.local {
        flags |= BE_F_LOCAL;
    }
    if b.terminating {
        flags |= BE_F_TERMINATING;
    }
    Backend4 {
        addr: addr.0,
        port: addr.1,
        flags,
        _pad: 0,
    }
}

fn be_addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// A backend's address as the maps hold it (network byte order).
fn kernel_addr(addr: &(Ipv4Addr, u16)) -> (u32, u16) {
    (be_addr(addr.0), addr.1.to_be())
}

/// A backend's address as the model holds it.
fn model_addr(addr: (u32, u16)) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(addr.0.to_ne_bytes()), u16::from_be(addr.1))
}

pub fn frontend_key(key: &FrontendKey) -> Frontend4Key {
    Frontend4Key {
        addr: be_addr(key.ip),
        port: key.port.to_be(),
        proto: key.proto.number(),
        scope: key.scope.number(),
    }
}

fn service_value(set: &BackendSet) -> Service {
    let mut flags = 0;
    if set.external_local {
        flags |= SVC_F_EXT_LOCAL;
    }
    if set.internal_local {
        flags |= SVC_F_INT_LOCAL;
    }
    if set.affinity_timeout.is_some() {
        flags |= SVC_F_AFFINITY;
    }
    Service {
        backend_count: 0,
        affinity_timeout: set.affinity_timeout.unwrap_or(0),
        flags,
        verdict: match set.verdict {
            Verdict::Reject => VERDICT_REJECT,
            Verdict::Drop => VERDICT_DROP,
        },
        _pad: [0; 2],
    }
}

/// The `LB_SVC_NAMES` value naming a set.
pub fn service_name_of(key: &SetKey) -> ServiceName {
    let mut out = ServiceName {
        proto: key.proto.number(),
        policy: key.policy.number(),
        ..Default::default()
    };
    copy_padded(&mut out.name, key.service.to_string().as_bytes());
    copy_padded(&mut out.port_name, key.port_name.as_bytes());
    out
}

/// The set a `LB_SVC_NAMES` value names.
pub fn set_key_of(name: &ServiceName) -> Option<SetKey> {
    let text = |b: &[u8]| {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8(b[..end].to_vec()).ok()
    };
    let full = text(&name.name)?;
    let (namespace, svc) = full.split_once('/')?;
    Some(SetKey {
        service: ObjectRef::new(namespace, svc),
        port_name: text(&name.port_name)?,
        proto: Protocol::from_number(name.proto)?,
        policy: Policy::from_number(name.policy)?,
    })
}

/// `src` at the start of the NUL-padded field `dst`, cut to fit.
pub(super) fn copy_padded(dst: &mut [u8], src: &[u8]) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
}

fn write_diff(maps: &mut Maps, cur: &Programmed, target: &Programmed, report: &mut Report) {
    let mut errors = Vec::new();
    let mut fail = |what: anyhow::Error| errors.push(format!("{what:#}"));
    // 1. Frontends that go away: nothing reaches their sets through them any more.
    for key in cur
        .frontends
        .keys()
        .filter(|k| !target.frontends.contains_key(k))
    {
        match maps.remove_frontend(key) {
            Ok(()) => report.frontends_removed += 1,
            Err(e) => fail(e),
        }
    }
    // 2. New and changed backends, before any slot names them.
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
    // 3. New and changed sets (slots before the count), unless a backend they need is missing.
    let mut failed_sets = HashSet::new();
    for (id, set) in &target.sets {
        let old = cur.sets.get(id);
        if old == Some(set) {
            continue;
        }
        if set.slots.iter().any(|b| failed_backends.contains(b)) {
            failed_sets.insert(*id);
            continue;
        }
        match write_set(maps, *id, old, set) {
            Ok(()) => report.sets_written += 1,
            Err(e) => {
                failed_sets.insert(*id);
                fail(e)
            }
        }
    }
    // 4a. Source ranges a frontend gains, before the frontend that needs them.
    for (stats_id, range) in target.ranges_not_in(cur) {
        if let Err(e) = maps.set_source_range(stats_id, range) {
            fail(e);
        }
    }
    // 4. New and changed frontends, now that their sets (and ranges) are complete.
    for (key, fe) in &target.frontends {
        let old = cur.frontends.get(key);
        if old == Some(fe) || failed_sets.contains(&fe.service_id) {
            continue;
        }
        let fresh_stats = old.is_none_or(|o| o.stats_id != fe.stats_id);
        let result = (|| {
            if fresh_stats {
                maps.reset_frontend_counters(fe.stats_id)?;
            }
            maps.set_frontend(key, fe)
        })();
        match result {
            Ok(()) => report.frontends_written += 1,
            Err(e) => fail(e),
        }
    }
    // 4b. Source ranges no frontend has any more (its flag cleared, or itself gone).
    for (stats_id, range) in cur.ranges_not_in(target) {
        if let Err(e) = maps.remove_source_range(stats_id, range) {
            fail(e);
        }
    }
    // 5. Sets no frontend points to any more, and the affinity entries of what went away.
    let gone: Vec<u32> = cur
        .sets
        .keys()
        .filter(|id| !target.sets.contains_key(id))
        .copied()
        .collect();
    for id in &gone {
        match maps.remove_named_service(*id) {
            Ok(()) => report.sets_removed += 1,
            Err(e) => fail(e),
        }
    }
    let stale = stale_affinities(cur, target);
    if !stale.is_empty() {
        if let Err(e) = maps.purge_affinity(|k, a| stale.contains(&(k.service_id, a.backend_id))) {
            fail(e);
        }
    }
    // 6. Backends nothing refers to any more.
    for id in cur
        .backends
        .keys()
        .filter(|id| !target.backends.contains_key(id))
    {
        match maps.remove_backend(*id) {
            Ok(()) => report.backends_removed += 1,
            Err(e) => fail(e),
        }
    }
    report.errors.extend(errors);
}

fn write_set(
    maps: &mut Maps,
    id: u32,
    old: Option<&ProgrammedSet>,
    set: &ProgrammedSet,
) -> Result<()> {
    if old.map(|o| &o.key) != Some(&set.key) {
        if let Some(key) = &set.key {
            maps.set_service_name(id, &service_name_of(key))?;
        }
    }
    let previous = old.map_or(0, |o| o.slots.len() as u32);
    maps.set_service(id, &set.service, &set.slots, previous)
}

/// (set, backend) pairs whose session-affinity entries must go: every pair of a removed set,
/// and a backend that left a set (a client must not stick to it through that service).
fn stale_affinities(cur: &Programmed, target: &Programmed) -> HashSet<(u32, u32)> {
    let mut stale = HashSet::new();
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
