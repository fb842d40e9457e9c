//! [`Desired`] kept up to date service by service, as kube-proxy's change trackers do: a new
//! snapshot of [`Objects`] is compared with the previous one by pointer, and only the services
//! whose Service, EndpointSlices or node changed are computed again.
//!
//! Each service (a `namespace/name` with a Service, slices labelled with it, or both) owns a
//! fragment of `Desired`: its sets (found by key range), and its claims on frontends, retained
//! backends and health-check ports. Those three may be claimed by several services; the oldest
//! Service holds the entry (creationTimestamp, then name), so a Service created later cannot take
//! over another's frontend whatever it is called. So that a shared entry always holds its
//! holder's value, every service sharing an entry with a changed one is computed again too
//! (shared entries are rare: two services on one address, one pod in two services).
//!
//! An externalIP or LoadBalancer IP that is another Service's ClusterIP, or this node's address,
//! is refused outright (CVE-2020-8554), on every port: a ClusterIP and a NodePort belong to the
//! Service they were allocated to, however old the other one. Whether an address is refused
//! depends on the other services' ClusterIPs, so every Service's ClusterIPs are indexed before any
//! service is computed, and a service whose external addresses meet a ClusterIP that comes or
//! goes is computed again.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::Hash,
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Service;
use smallvec::SmallVec;

use super::{
    endpoints, service::cluster_ips_of, set_range, share_of, zone_of, Desired, Family, FrontendKey,
    NodeContext, ObjectRef, Objects, Problem, Scope,
};

/// What one [`Tracker::update`] changed in [`Desired`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes<A = Ipv4Addr> {
    /// The node changed: any entry may have (the lists below name them all anyway).
    pub node: bool,
    /// Services whose sets or frontends may have changed, each with the frontends it wins now.
    pub services: BTreeMap<ObjectRef, Vec<FrontendKey<A>>>,
    /// Retained backends added, removed or changed.
    pub retained: BTreeSet<(A, u16)>,
}

impl<A> Default for Changes<A> {
    fn default() -> Self {
        Changes {
            node: false,
            services: BTreeMap::new(),
            retained: BTreeSet::new(),
        }
    }
}

/// A service's claims, to release them when it changes.
struct Fragment<A> {
    frontends: Vec<FrontendKey<A>>,
    retained: Vec<(A, u16)>,
    health_check: Option<u16>,
    /// Its Service's ClusterIPs, proxied or not.
    cluster_ips: Vec<A>,
    /// The externalIPs and LoadBalancer IPs its Service lists, refused or not.
    requested: Vec<A>,
    problems: Vec<Problem>,
}

/// [`Desired`] of family `A`, kept up to date (one tracker per family, as kube-proxy's
/// per-family change trackers).
pub struct Tracker<A = Ipv4Addr> {
    node: NodeContext<A>,
    zone: String,
    /// Slices by the service their label names.
    groups: HashMap<ObjectRef, BTreeSet<ObjectRef>>,
    fragments: HashMap<ObjectRef, Fragment<A>>,
    frontends: Claims<FrontendKey<A>>,
    retained: Claims<(A, u16)>,
    health_checks: Claims<u16>,
    /// Services by the addresses they hold as ClusterIPs and those they request as external.
    cluster_ips: Claims<A>,
    requested: Claims<A>,
    /// Services whose fragment has problems.
    troubled: BTreeSet<ObjectRef>,
    desired: Desired<A>,
}

impl<A> Default for Tracker<A> {
    fn default() -> Self {
        Tracker {
            node: NodeContext::default(),
            zone: String::new(),
            groups: HashMap::new(),
            fragments: HashMap::new(),
            frontends: Claims::default(),
            retained: Claims::default(),
            health_checks: Claims::default(),
            cluster_ips: Claims::default(),
            requested: Claims::default(),
            troubled: BTreeSet::new(),
            desired: Desired::default(),
        }
    }
}

impl<A: Family> Tracker<A> {
    pub fn desired(&self) -> &Desired<A> {
        &self.desired
    }

    pub fn into_desired(self) -> Desired<A> {
        self.desired
    }

    /// Bring [`Desired`] from `previous` (what the last update saw) to `objects`.
    pub fn update(
        &mut self,
        previous: &Objects,
        objects: &Objects,
        node: &NodeContext<A>,
    ) -> Changes<A> {
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

    fn recompute(&mut self, mut dirty: BTreeSet<ObjectRef>, objects: &Objects) -> Changes<A> {
        let flipped = self.flipped(&dirty, objects);
        dirty.extend(flipped);
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
        // All ClusterIPs first: any of them may refuse another service's external address.
        let allocated: Vec<_> = dirty
            .iter()
            .map(|name| self.allocate(name, objects))
            .collect();
        for (name, cluster_ips) in dirty.iter().zip(allocated) {
            self.add(name, cluster_ips, objects, &mut changes);
        }
        changes
            .services
            .extend(dirty.into_iter().map(|n| (n, Vec::new())));
        for (name, won) in changes.services.iter_mut() {
            let Some(fragment) = self.fragments.get(name) else {
                continue;
            };
            let wins = |k: &&FrontendKey<A>| self.frontends.winner(k) == Some(name);
            *won = fragment.frontends.iter().filter(wins).copied().collect();
        }
        self.desired.problems = self.problems();
        changes
    }

    /// Services requesting an external address that gains or loses a ClusterIP among `dirty`:
    /// whether it is refused changes.
    fn flipped(&self, dirty: &BTreeSet<ObjectRef>, objects: &Objects) -> Vec<ObjectRef> {
        let mut out = Vec::new();
        for name in dirty {
            let old = self.fragments.get(name).map_or(&[][..], |f| &f.cluster_ips);
            let new = objects.services.get(name);
            let new = new.map_or_else(Vec::new, |s| cluster_ips_of::<A>(s));
            let gone = old.iter().filter(|ip| !new.contains(ip));
            let came = new.iter().filter(|ip| !old.contains(ip));
            for ip in gone.chain(came) {
                out.extend(self.requested.claimants(ip).iter().map(|c| c.name.clone()));
            }
        }
        out
    }

    /// The other services claiming an entry this fragment claims.
    fn sharing<'a>(&'a self, f: &'a Fragment<A>) -> impl Iterator<Item = &'a ObjectRef> {
        let frontends = f.frontends.iter().flat_map(|k| self.frontends.claimants(k));
        let retained = f.retained.iter().flat_map(|k| self.retained.claimants(k));
        let health = f
            .health_check
            .iter()
            .flat_map(|k| self.health_checks.claimants(k));
        frontends.chain(retained).chain(health).map(|c| &c.name)
    }

    /// Index the ClusterIPs of a service's Service; returns them for its fragment.
    fn allocate(&mut self, name: &ObjectRef, objects: &Objects) -> Vec<A> {
        let Some(svc) = objects.services.get(name) else {
            return Vec::new();
        };
        let cluster_ips = cluster_ips_of(svc);
        let claimant = Claimant::new(name, Some(svc));
        for ip in &cluster_ips {
            self.cluster_ips.insert(*ip, claimant.clone());
        }
        cluster_ips
    }

    /// Why `name` may not serve `ip` as an externalIP or LoadBalancer IP.
    fn refusal(&self, name: &ObjectRef, ip: A) -> Option<String> {
        if self.node.nodeport_addrs.contains(&ip) {
            return Some("an address of this node".into());
        }
        let claimants = self.cluster_ips.claimants(&ip);
        let owner = claimants.iter().find(|c| c.name != *name)?;
        Some(format!("the ClusterIP of {}", owner.name))
    }

    /// Take a service's fragment out of `Desired`.
    fn remove(&mut self, name: &ObjectRef, changes: &mut Changes<A>) {
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
        for ip in &fragment.cluster_ips {
            self.cluster_ips.remove(ip, name);
        }
        for ip in &fragment.requested {
            self.requested.remove(ip, name);
        }
        self.troubled.remove(name);
    }

    /// Compute a service's fragment and merge it into `Desired`.
    fn add(
        &mut self,
        name: &ObjectRef,
        cluster_ips: Vec<A>,
        objects: &Objects,
        changes: &mut Changes<A>,
    ) {
        let mut problems = Vec::new();
        let eps = self.groups.get(name).map(|group| {
            let slices = group.iter().map(|k| (k, &*objects.slices[k]));
            endpoints::merge(slices, &self.node.name, &mut problems)
        });
        let svc = objects.services.get(name).map(|s| &**s);
        let share = match svc {
            Some(svc) => {
                let refusal = |ip| self.refusal(name, ip);
                share_of(name, svc, eps.as_ref(), &self.node, &self.zone, refusal)
            }
            None => Default::default(),
        };
        let claimant = Claimant::new(name, svc);
        problems.extend(share.problems);
        let d = &mut self.desired;
        d.sets.extend(share.sets);
        let mut fragment = Fragment {
            frontends: share.frontends.keys().copied().collect(),
            retained: share.retained.keys().copied().collect(),
            health_check: share.health_check.as_ref().map(|(port, _)| *port),
            cluster_ips,
            requested: share.requested,
            problems,
        };
        for (key, fe) in share.frontends {
            let claimed = self.frontends.claim(&mut d.frontends, key, &claimant, fe);
            if let Some(loser) = claimed {
                // It no longer programs this frontend: the reconciler must hear of it.
                changes.services.insert(loser, Vec::new());
            }
        }
        for (key, backend) in share.retained {
            self.retained
                .claim(&mut d.retained, key, &claimant, backend);
            changes.retained.insert(key);
        }
        if let Some((port, check)) = share.health_check {
            self.health_checks
                .claim(&mut d.health_checks, port, &claimant, check);
        }
        for ip in &fragment.requested {
            self.requested.insert(*ip, claimant.clone());
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
        let contested = self.frontends.contested.iter();
        for key in contested.filter(|k| k.scope == Scope::External) {
            let [holder, losers @ ..] = self.frontends.claimants(key) else {
                continue;
            };
            for loser in losers {
                out.push(Problem {
                    object: format!("Service {}", loser.name),
                    field: "spec".into(),
                    message: format!(
                        "{}/{} is also a frontend of {}, older or as old and first by name: \
                         not served",
                        std::net::SocketAddr::new(key.ip.into(), key.port),
                        key.proto.as_str(),
                        holder.name,
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

/// A Service's metadata.creationTimestamp in seconds (the API server's resolution). One without
/// it (a manifest's) sorts as the newest: it cannot get ahead of a Service that has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Created(i64);

/// A service's claim on an entry. Claims sort by precedence, the holder first: the oldest
/// Service, then the least name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claimant {
    created: Created,
    name: ObjectRef,
}

impl Claimant {
    fn new(name: &ObjectRef, svc: Option<&Service>) -> Self {
        let created = svc.and_then(|s| s.metadata.creation_timestamp.as_ref());
        Claimant {
            created: Created(created.map_or(i64::MAX, |t| t.0.as_second())),
            name: name.clone(),
        }
    }
}

/// Claimants of one entry, in precedence order. Nearly every entry has one (500,000 retained
/// backends at 50,000 services): it is held inline rather than in a `Vec` of its own.
type Claimants = SmallVec<[Claimant; 1]>;

/// Entries that several services may claim: the first claimant holds it.
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
    fn claimants(&self, key: &K) -> &[Claimant] {
        self.by_key.get(key).map_or(&[], Claimants::as_slice)
    }

    fn winner(&self, key: &K) -> Option<&ObjectRef> {
        self.claimants(key).first().map(|c| &c.name)
    }

    /// Add a claim; true if it comes first.
    fn insert(&mut self, key: K, claimant: Claimant) -> bool {
        let claimants = self.by_key.entry(key.clone()).or_default();
        let at = claimants.partition_point(|c| *c < claimant);
        claimants.insert(at, claimant);
        if claimants.len() > 1 {
            self.contested.insert(key);
        }
        at == 0
    }

    /// Drop `name`'s claim; true if it came first.
    fn remove(&mut self, key: &K, name: &ObjectRef) -> bool {
        let Some(claimants) = self.by_key.get_mut(key) else {
            return false;
        };
        let Some(at) = claimants.iter().position(|c| c.name == *name) else {
            return false;
        };
        claimants.remove(at);
        match claimants.len() {
            0 => {
                self.by_key.remove(key);
            }
            1 => {
                self.contested.remove(key);
            }
            _ => {}
        }
        at == 0
    }

    /// Add a claim, writing `value` into `map` if it comes first; returns the service it took
    /// the entry from.
    fn claim<V>(
        &mut self,
        map: &mut BTreeMap<K, V>,
        key: K,
        claimant: &Claimant,
        value: V,
    ) -> Option<ObjectRef> {
        let before = self.winner(&key).cloned();
        if !self.insert(key.clone(), claimant.clone()) {
            return None;
        }
        map.insert(key, value);
        before
    }

    /// Drop `name`'s claim; the entry leaves `map` if it was `name`'s (a remaining claimant
    /// writes its own value again, being computed again too).
    fn release<V>(&mut self, map: &mut BTreeMap<K, V>, key: &K, name: &ObjectRef) {
        if self.remove(key, name) {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
