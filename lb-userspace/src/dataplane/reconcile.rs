//! Keep the kernel maps equal to a [`Desired`] state by writing only the difference.
//!
//! The order of writes is what keeps packets safe while the maps change:
//! 1. frontends that go away, then the backend sets only they used (and their affinity entries);
//! 2. new and changed backends, then backend sets (slots before the count), then frontends;
//! 3. backends nothing refers to any more.
//!
//! A packet therefore never meets a frontend whose set is missing, nor a slot whose backend is
//! missing. Ids are stable: a backend keeps its id while its address and port stay (conntrack
//! entries name backends by id), a set keeps its id while its service port and policy stay, and
//! a frontend keeps its counters. Services that would not fit in the maps are refused whole and
//! keep what they had.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::{
    Backend4, Frontend4, Frontend4Key, Service, ServiceName, BE_F_LOCAL, BE_F_TERMINATING,
    SVC_F_AFFINITY, SVC_F_EXT_LOCAL, SVC_F_INT_LOCAL, VERDICT_DROP, VERDICT_REJECT,
};

use super::maps::{entries, Capacities, Maps};
use crate::model::{
    BackendSet, Desired, FrontendKey, ObjectRef, Policy, Protocol, SetKey, Verdict,
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
}

impl Programmed {
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
}

/// Where the next id search starts: ids are not reused right away, so a stale reference (a
/// conntrack entry, an affinity entry) rarely meets a new owner of its id.
#[derive(Default)]
struct Cursors {
    set: u32,
    backend: u32,
    stats: u32,
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
            current,
            cursors,
        })
    }

    pub fn programmed(&self) -> &Programmed {
        &self.current
    }

    /// Re-read the maps, so the next apply repairs whatever changed behind the agent's back.
    pub fn resync(&mut self, maps: &Maps) -> Result<()> {
        self.current = Programmed::read(maps)?;
        Ok(())
    }

    pub fn apply(&mut self, maps: &mut Maps, desired: &Desired) -> Report {
        let mut report = Report::default();
        let target = self.plan(desired, &mut report);
        write_diff(maps, &self.current, &target, &mut report);
        self.current = if report.errors.is_empty() {
            target
        } else {
            // Some writes failed: believe the maps, the next apply retries the rest.
            Programmed::read(maps).unwrap_or(target)
        };
        report
    }

    /// The maps' next contents: every service that fits, and the old entries of those that don't.
    fn plan(&mut self, desired: &Desired, report: &mut Report) -> Programmed {
        let mut plan = Planner::new(self, desired);
        let programmed: HashSet<ObjectRef> =
            plan.set_ids.keys().map(|k| k.service.clone()).collect();
        let mut services: Vec<&ObjectRef> = desired.services().into_iter().collect();
        // Services already programmed go first: an update never loses to a newcomer.
        services.sort_by_key(|s| (!programmed.contains(*s), *s));
        for service in services {
            if let Err(map) = plan.admit(service) {
                report.refused.push((service.clone(), map));
                plan.keep_current(service);
            }
        }
        plan.retain();
        plan.target
    }
}

/// Builds the target state service by service, allocating ids and counting map usage.
struct Planner<'a> {
    rec: &'a mut Reconciler,
    desired: &'a Desired,
    set_ids: HashMap<SetKey, u32>,
    backend_ids: HashMap<(u32, u16), u32>,
    /// Ids taken, in the maps or by this plan.
    sets_used: HashSet<u32>,
    backends_used: HashSet<u32>,
    stats_used: HashSet<u32>,
    /// Sets and backends this plan adds (not in the maps yet).
    fresh_sets: usize,
    fresh_backends: usize,
    target: Programmed,
    slots: u64,
    by_service: BTreeMap<&'a ObjectRef, Vec<(&'a FrontendKey, &'a SetKey)>>,
}

impl<'a> Planner<'a> {
    fn new(rec: &'a mut Reconciler, desired: &'a Desired) -> Self {
        let set_ids = rec
            .current
            .sets
            .iter()
            .filter_map(|(id, s)| Some((s.key.clone()?, *id)))
            .collect();
        let backend_ids = rec
            .current
            .backends
            .iter()
            .map(|(id, b)| ((b.addr, b.port), *id))
            .collect();
        let sets_used = rec.current.sets.keys().copied().chain([0]).collect();
        let backends_used = rec.current.backends.keys().copied().chain([0]).collect();
        let stats_used = rec.current.frontends.values().map(|f| f.stats_id).collect();
        let mut by_service: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for (key, fe) in &desired.frontends {
            by_service
                .entry(&fe.set.service)
                .or_default()
                .push((key, &fe.set));
        }
        Planner {
            rec,
            desired,
            set_ids,
            backend_ids,
            sets_used,
            backends_used,
            stats_used,
            fresh_sets: 0,
            fresh_backends: 0,
            target: Programmed::default(),
            slots: 0,
            by_service,
        }
    }

    /// Add one service's sets and frontends to the target, or say which map it overflows.
    fn admit(&mut self, service: &ObjectRef) -> Result<(), &'static str> {
        let sets: Vec<(&SetKey, &BackendSet)> =
            self.desired.sets.range(set_range(service)).collect();
        let frontends = self.by_service.get(service).cloned().unwrap_or_default();
        let caps = self.rec.caps;
        let new_backends: BTreeSet<(u32, u16)> = sets
            .iter()
            .flat_map(|(_, s)| s.backends.iter().map(|b| (be_addr(b.ip), b.port.to_be())))
            .filter(|b| !self.target_has_backend(b))
            .collect();
        let slots: u64 = sets.iter().map(|(_, s)| s.backends.len() as u64).sum();
        if self.target.frontends.len() + frontends.len() > caps.frontends as usize {
            return Err(lb_common::map_names::FRONTENDS4);
        }
        // Old sets go only after the new ones are in (step 5 of write_diff): count both.
        let fresh_sets = sets
            .iter()
            .filter(|(k, _)| !self.set_ids.contains_key(*k))
            .count();
        let peak_sets = self.rec.current.sets.len() + self.fresh_sets + fresh_sets;
        if peak_sets > caps.services as usize {
            return Err(lb_common::map_names::SERVICES);
        }
        if self.slots + slots > caps.slots as u64 {
            return Err(lb_common::map_names::SLOTS);
        }
        if self.backend_count_with(&new_backends) > caps.backends as usize {
            return Err(lb_common::map_names::BACKENDS4);
        }
        for (key, set) in sets {
            self.add_set(key, set);
        }
        self.slots += slots;
        for (key, set) in frontends {
            self.add_frontend(key, set);
        }
        Ok(())
    }

    fn target_has_backend(&self, b: &(u32, u16)) -> bool {
        self.backend_ids
            .get(b)
            .is_some_and(|id| self.target.backends.contains_key(id))
    }

    /// Backends in the maps at the peak of the update: every current one (removals come last),
    /// those this plan added so far, and this service's new ones.
    fn backend_count_with(&self, new: &BTreeSet<(u32, u16)>) -> usize {
        let fresh = new
            .iter()
            .filter(|b| !self.backend_ids.contains_key(*b))
            .count();
        self.rec.current.backends.len() + self.fresh_backends + fresh
    }

    fn add_set(&mut self, key: &SetKey, set: &BackendSet) {
        let id = match self.set_ids.get(key) {
            Some(id) => *id,
            None => {
                self.fresh_sets += 1;
                let id = alloc(&mut self.rec.cursors.set, ID_LIMIT, &mut self.sets_used);
                self.set_ids.insert(key.clone(), id);
                id
            }
        };
        let slots = set.backends.iter().map(|b| self.backend_id(b)).collect();
        let programmed = ProgrammedSet {
            key: Some(key.clone()),
            service: service_value(set),
            slots,
        };
        self.target.sets.insert(id, programmed);
    }

    fn backend_id(&mut self, b: &crate::model::Backend) -> u32 {
        let addr = (be_addr(b.ip), b.port.to_be());
        let id = match self.backend_ids.get(&addr) {
            Some(id) => *id,
            None => {
                self.fresh_backends += 1;
                let id = alloc(
                    &mut self.rec.cursors.backend,
                    ID_LIMIT,
                    &mut self.backends_used,
                );
                self.backend_ids.insert(addr, id);
                id
            }
        };
        self.target.backends.insert(id, backend_value(addr, b));
        id
    }

    fn add_frontend(&mut self, key: &FrontendKey, set: &SetKey) {
        let kernel_key = frontend_key(key);
        let kind = self.desired.frontends[key].kind.number();
        let stats_id = match self.rec.current.frontends.get(&kernel_key) {
            Some(fe) => fe.stats_id,
            None => {
                let limit = self.rec.caps.frontends;
                alloc(&mut self.rec.cursors.stats, limit, &mut self.stats_used)
            }
        };
        let value = Frontend4 {
            service_id: self.set_ids[set],
            stats_id,
            kind,
            _pad: [0; 3],
        };
        self.target.frontends.insert(kernel_key, value);
    }

    /// Backends of endpoints still listed but in no set (terminating, not ready) stay while
    /// they have an id: established connections to them keep going. No new ids: nothing
    /// can be connected to a backend that was never programmed.
    fn retain(&mut self) {
        for b in self.desired.retained.values() {
            let addr = (be_addr(b.ip), b.port.to_be());
            let Some(id) = self.backend_ids.get(&addr).copied() else {
                continue;
            };
            self.target
                .backends
                .entry(id)
                .or_insert_with(|| backend_value(addr, b));
        }
    }

    /// A refused service keeps whatever the maps already hold for it.
    fn keep_current(&mut self, service: &ObjectRef) {
        let current = &self.rec.current;
        let ids: HashSet<u32> = current
            .sets
            .iter()
            .filter(|(_, s)| s.key.as_ref().is_some_and(|k| &k.service == service))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            let set = current.sets[id].clone();
            for be in &set.slots {
                if let Some(b) = current.backends.get(be) {
                    self.target.backends.insert(*be, *b);
                }
            }
            self.slots += set.slots.len() as u64;
            self.target.sets.insert(*id, set);
        }
        for (key, fe) in &current.frontends {
            if ids.contains(&fe.service_id) {
                self.target.frontends.insert(*key, *fe);
            }
        }
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

fn set_range(service: &ObjectRef) -> std::ops::RangeInclusive<SetKey> {
    let key = |port_name: String, proto, policy| SetKey {
        service: service.clone(),
        port_name,
        proto,
        policy,
    };
    // Port names are at most 15 bytes of [a-z0-9-]: U+10FFFF sorts after all of them.
    key(String::new(), Protocol::Tcp, Policy::Cluster)
        ..=key("\u{10FFFF}".into(), Protocol::Udp, Policy::Local)
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

/// The `LB_SERVICE_NAMES` value naming a set.
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

/// The set a `LB_SERVICE_NAMES` value names.
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

fn copy_padded(dst: &mut [u8], src: &[u8]) {
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
    // 4. New and changed frontends, now that their sets are complete.
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
