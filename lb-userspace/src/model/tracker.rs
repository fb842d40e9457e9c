//! [`Desired`] kept up to date service by service, as kube-proxy's change trackers do: a new
//! snapshot of [`Objects`] is compared with the previous one by pointer, and only the services
//! whose Service, EndpointSlices or node changed are computed again.
//!
//! Each service (a `namespace/name` with a Service, slices labelled with it, or both) owns a
//! fragment of `Desired`: its sets (found by key range), and its claims on frontends, retained
//! backends and health-check ports. Those three may be claimed by several services; the greatest
//! name wins, as when services are added in name order, later ones overwriting. So that a shared
//! entry always holds its winner's value, every service sharing an entry with a changed one is
//! computed again too (shared entries are rare: two services on one address, one pod in two
//! services).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::Hash,
    net::Ipv4Addr,
    sync::Arc,
};

use smallvec::SmallVec;

use super::{
    endpoints, set_range, share_of, zone_of, Desired, FrontendKey, NodeContext, ObjectRef, Objects,
    Problem, Scope,
};

/// What one [`Tracker::update`] changed in [`Desired`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The node changed: any entry may have (the lists below name them all anyway).
    pub node: bool,
    /// Services whose sets or frontends may have changed, each with the frontends it wins now.
    pub services: BTreeMap<ObjectRef, Vec<FrontendKey>>,
    /// Retained backends added, removed or changed.
    pub retained: BTreeSet<(Ipv4Addr, u16)>,
}

/// A service's claims, to release them when it changes.
#[derive(Default)]
struct Fragment {
    frontends: Vec<FrontendKey>,
    retained: Vec<(Ipv4Addr, u16)>,
    health_check: Option<u16>,
    problems: Vec<Problem>,
}

#[derive(Default)]
pub struct Tracker {
    node: NodeContext,
    zone: String,
    /// Slices by the service their label names.
    groups: HashMap<ObjectRef, BTreeSet<ObjectRef>>,
    fragments: HashMap<ObjectRef, Fragment>,
    frontends: Claims<FrontendKey>,
    retained: Claims<(Ipv4Addr, u16)>,
    health_checks: Claims<u16>,
    /// Services whose fragment has problems.
    troubled: BTreeSet<ObjectRef>,
    desired: Desired,
}

impl Tracker {
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    pub fn into_desired(self) -> Desired {
        self.desired
    }

    /// Bring [`Desired`] from `previous` (what the last update saw) to `objects`.
    pub fn update(&mut self, previous: &Objects, objects: &Objects, node: &NodeContext) -> Changes {
        let mut dirty = BTreeSet::new();
        for_changed(&previous.slices, &objects.slices, |name, old, new| {
            if let Some(service) = old.and_then(|s| endpoints::group_of(name, s)) {
                self.leave_group(&service, name);
                dirty.insert(service);
            }
            if let Some(service) = new.and_then(|s| endpoints::group_of(name, s)) {
                let group = self.groups.entry(service.clone()).or_default();
                group.insert(name.clone());
                dirty.insert(service);
            }
        });
        for_changed(&previous.services, &objects.services, |name, _, _| {
            dirty.insert(name.clone());
        });
        let zone = zone_of(objects, node);
        let node_changed = *node != self.node || zone != self.zone;
        if node_changed {
            self.node = node.clone();
            self.zone = zone;
            dirty.extend(self.fragments.keys().cloned());
            dirty.extend(objects.services.keys().cloned());
            dirty.extend(self.groups.keys().cloned());
        }
        let mut changes = self.recompute(dirty, objects);
        changes.node = node_changed;
        changes
    }

    fn leave_group(&mut self, service: &ObjectRef, slice: &ObjectRef) {
        if let Some(group) = self.groups.get_mut(service) {
            group.remove(slice);
            if group.is_empty() {
                self.groups.remove(service);
            }
        }
    }

    fn recompute(&mut self, mut dirty: BTreeSet<ObjectRef>, objects: &Objects) -> Changes {
        let sharing: Vec<ObjectRef> = dirty
            .iter()
            .filter_map(|name| self.fragments.get(name))
            .flat_map(|f| self.sharing(f))
            .cloned()
            .collect();
        dirty.extend(sharing);
        let mut changes = Changes::default();
        for name in &dirty {
            self.remove(name, &mut changes);
        }
        for name in &dirty {
            self.add(name, objects, &mut changes);
        }
        changes
            .services
            .extend(dirty.into_iter().map(|n| (n, Vec::new())));
        for (name, won) in changes.services.iter_mut() {
            let Some(fragment) = self.fragments.get(name) else {
                continue;
            };
            let wins = |k: &&FrontendKey| self.frontends.winner(k) == Some(name);
            *won = fragment.frontends.iter().filter(wins).copied().collect();
        }
        self.desired.problems = self.problems();
        changes
    }

    /// The other services claiming an entry this fragment claims.
    fn sharing<'a>(&'a self, f: &'a Fragment) -> impl Iterator<Item = &'a ObjectRef> {
        let frontends = f.frontends.iter().flat_map(|k| self.frontends.claimants(k));
        let retained = f.retained.iter().flat_map(|k| self.retained.claimants(k));
        let health = f
            .health_check
            .iter()
            .flat_map(|k| self.health_checks.claimants(k));
        frontends.chain(retained).chain(health)
    }

    /// Take a service's fragment out of `Desired`.
    fn remove(&mut self, name: &ObjectRef, changes: &mut Changes) {
        let Some(fragment) = self.fragments.remove(name) else {
            return;
        };
        let d = &mut self.desired;
        let sets: Vec<_> = d
            .sets
            .range(set_range(name))
            .map(|(k, _)| k.clone())
            .collect();
        for key in sets {
            d.sets.remove(&key);
        }
        for key in &fragment.frontends {
            self.frontends.release(&mut d.frontends, key, name);
        }
        for key in &fragment.retained {
            self.retained.release(&mut d.retained, key, name);
            changes.retained.insert(*key);
        }
        if let Some(port) = &fragment.health_check {
            self.health_checks.release(&mut d.health_checks, port, name);
        }
        self.troubled.remove(name);
    }

    /// Compute a service's fragment and merge it into `Desired`.
    fn add(&mut self, name: &ObjectRef, objects: &Objects, changes: &mut Changes) {
        let mut problems = Vec::new();
        let eps = self.groups.get(name).map(|group| {
            let slices = group.iter().map(|k| (k, &*objects.slices[k]));
            endpoints::merge(slices, &self.node.name, &mut problems)
        });
        let share = match objects.services.get(name) {
            Some(svc) => share_of(name, svc, eps.as_ref(), &self.node, &self.zone),
            None => Default::default(),
        };
        problems.extend(share.problems);
        let d = &mut self.desired;
        d.sets.extend(share.sets);
        let mut fragment = Fragment {
            frontends: share.frontends.keys().copied().collect(),
            retained: share.retained.keys().copied().collect(),
            health_check: share.health_check.as_ref().map(|(port, _)| *port),
            problems,
        };
        for (key, fe) in share.frontends {
            if let Some(loser) = self.frontends.claim(&mut d.frontends, key, name, fe) {
                // It no longer programs this frontend: the reconciler must hear of it.
                changes.services.insert(loser, Vec::new());
            }
        }
        for (key, backend) in share.retained {
            self.retained.claim(&mut d.retained, key, name, backend);
            changes.retained.insert(key);
        }
        if let Some((port, check)) = share.health_check {
            self.health_checks
                .claim(&mut d.health_checks, port, name, check);
        }
        if !fragment.problems.is_empty() {
            self.troubled.insert(name.clone());
        }
        fragment.problems.shrink_to_fit();
        self.fragments.insert(name.clone(), fragment);
    }

    /// Every fragment's problems, and one per service that lost a frontend to another (sorted).
    fn problems(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> = self
            .troubled
            .iter()
            .flat_map(|name| self.fragments[name].problems.iter().cloned())
            .collect();
        for key in self.frontends.contested.iter() {
            if key.scope != Scope::External {
                continue;
            }
            for pair in self.frontends.claimants(key).windows(2) {
                let (before, name) = (&pair[0], &pair[1]);
                out.push(Problem {
                    object: format!("Service {name}"),
                    field: "spec".into(),
                    message: format!(
                        "{}:{}/{} is also a frontend of {before}; {name} wins",
                        key.ip,
                        key.port,
                        key.proto.as_str(),
                    ),
                });
            }
        }
        out.sort();
        out
    }
}

/// Call `f` with each key whose value is not the same `Arc` in both maps (old, new values).
fn for_changed<K: Ord, V>(
    old: &BTreeMap<K, Arc<V>>,
    new: &BTreeMap<K, Arc<V>>,
    mut f: impl FnMut(&K, Option<&V>, Option<&V>),
) {
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return,
            (Some((ko, vo)), Some((kn, vn))) if ko == kn => {
                if !Arc::ptr_eq(vo, vn) {
                    f(kn, Some(vo), Some(vn));
                }
                old.next();
                new.next();
            }
            (Some((ko, vo)), next) if next.is_none_or(|(kn, _)| ko < kn) => {
                f(ko, Some(vo), None);
                old.next();
            }
            (_, Some((kn, vn))) => {
                f(kn, None, Some(vn));
                new.next();
            }
            (Some(_), None) => unreachable!("handled above"),
        }
    }
}

/// Claimants of one entry, sorted. Nearly every entry has one (500,000 retained backends at
/// 50,000 services): it is held inline rather than in a `Vec` of its own.
type Claimants = SmallVec<[ObjectRef; 1]>;

/// Entries of `Desired` that several services may claim: the greatest name holds it.
struct Claims<K> {
    by_key: HashMap<K, Claimants>,
    /// Keys with more than one claimant.
    contested: BTreeSet<K>,
}

impl<K> Default for Claims<K> {
    fn default() -> Self {
        Claims {
            by_key: HashMap::new(),
            contested: BTreeSet::new(),
        }
    }
}

impl<K: Clone + Ord + Hash> Claims<K> {
    fn claimants(&self, key: &K) -> &[ObjectRef] {
        self.by_key.get(key).map_or(&[], Claimants::as_slice)
    }

    fn winner(&self, key: &K) -> Option<&ObjectRef> {
        self.claimants(key).last()
    }

    /// Add `name`'s claim, writing `value` into `map` if it wins; returns the service it took
    /// the entry from.
    fn claim<V>(
        &mut self,
        map: &mut BTreeMap<K, V>,
        key: K,
        name: &ObjectRef,
        value: V,
    ) -> Option<ObjectRef> {
        let claimants = self.by_key.entry(key.clone()).or_default();
        let before = claimants.last().cloned();
        let at = claimants.partition_point(|c| c < name);
        claimants.insert(at, name.clone());
        if claimants.len() > 1 {
            self.contested.insert(key.clone());
        }
        if at + 1 < claimants.len() {
            return None;
        }
        map.insert(key, value);
        before
    }

    /// Drop `name`'s claim; the entry leaves `map` if it was `name`'s (a remaining claimant
    /// writes its own value again, being computed again too).
    fn release<V>(&mut self, map: &mut BTreeMap<K, V>, key: &K, name: &ObjectRef) {
        let Some(claimants) = self.by_key.get_mut(key) else {
            return;
        };
        let Ok(at) = claimants.binary_search(name) else {
            return;
        };
        claimants.remove(at);
        if at == claimants.len() {
            map.remove(key);
        }
        match claimants.len() {
            0 => {
                self.by_key.remove(key);
            }
            1 => {
                self.contested.remove(key);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
