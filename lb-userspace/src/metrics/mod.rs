//! The agent's Prometheus metrics and its own health endpoints, served on `--metrics-addr`:
//! - `GET /metrics`: OpenMetrics text. Sync counters, programming latency and fill levels come
//!   from the run loop ([`Metrics::record_sync`]); per-frontend packet/byte counters and datapath
//!   event counters are read from the pinned per-CPU maps at scrape time.
//! - `GET /healthz`: 200 `ok` once a sync has been applied and the last successful one is recent
//!   (kube-proxy's healthz: stale after twice the resync interval), 503 otherwise.
//! - `GET /livez`: 200 `ok` while the control loop turns ([`Liveness`]): 503 once it has not
//!   turned for three times the healthz timeout (60 s at the defaults: a resync turns it every
//!   10 s, the longest apply measured at 50k services took 13 s).
mod datapath;
mod http;

use std::{
    collections::BTreeSet,
    net::Ipv6Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_common::map_names;
use prometheus_client::{
    encoding::text::{encode_eof, encode_registry},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

pub use datapath::{frontend_series, read_datapath, Datapath, FrontendSeries};
pub use http::{healthz_reply, livez_reply, serve, serve_on, serve_retrying, CONTENT_TYPE};

use crate::{
    dataplane::{
        reconcile::{KernelFamily, Programmed, Report},
        Capacities, PinLayout, XdpModeUsed,
    },
    health::{Liveness, ProxyHealth},
    model::{Desired, Problem},
};

/// `lb_sync_errors_total{kind}` values.
pub const ERR_MAP_WRITE: &str = "map_write";
pub const ERR_REFUSED_SERVICE: &str = "refused_service";
pub const ERR_INVALID_OBJECT: &str = "invalid_object";

pub(crate) type OneLabel = [(&'static str, &'static str); 1];
pub(crate) type Labels = Vec<(&'static str, String)>;

/// What an apply left, in both families: the desired state and what the maps hold.
pub struct Synced<'a> {
    pub desired: &'a Desired,
    pub desired6: &'a Desired<Ipv6Addr>,
    pub programmed: &'a Programmed,
    pub programmed6: &'a Programmed<Ipv6Addr>,
}

/// A map the agent fills: `lb_map_capacity` and `lb_map_entries` have a series for each.
struct FilledMap {
    name: &'static str,
    capacity: fn(&Capacities) -> u32,
    entries: fn(&Synced) -> usize,
}

/// Slots of a family's sets.
fn slots<A: KernelFamily>(p: &Programmed<A>) -> usize {
    p.sets.values().map(|s| s.slots.len()).sum()
}

const FILLED_MAPS: [FilledMap; 6] = [
    FilledMap {
        name: map_names::FRONTENDS4,
        capacity: |c| c.frontends,
        entries: |s| s.programmed.frontends.len(),
    },
    FilledMap {
        name: map_names::FRONTENDS6,
        capacity: |c| c.frontends,
        entries: |s| s.programmed6.frontends.len(),
    },
    FilledMap {
        name: map_names::SERVICES,
        capacity: |c| c.services,
        entries: |s| s.programmed.sets.len() + s.programmed6.sets.len(),
    },
    FilledMap {
        name: map_names::SLOTS,
        capacity: |c| c.slots,
        entries: |s| slots(s.programmed) + slots(s.programmed6),
    },
    FilledMap {
        name: map_names::BACKENDS4,
        capacity: |c| c.backends,
        entries: |s| s.programmed.backends.len(),
    },
    FilledMap {
        name: map_names::BACKENDS6,
        capacity: |c| c.backends,
        entries: |s| s.programmed6.backends.len(),
    },
];

/// The metrics, shared by the run loop (which records) and the HTTP server (which renders).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    syncs: Counter,
    sync_errors: Family<OneLabel, Counter>,
    latency: Histogram,
    frontends: Gauge,
    backends: Gauge,
    backend_sets: Gauge,
    map_entries: Family<OneLabel, Gauge>,
    invalid_objects: Gauge,
    unserved_local_endpoints: Gauge,
    ct_flows: Family<OneLabel, Gauge>,
    ct_collected: Counter,
    ct_orphans: Counter,
    interfaces: Family<Labels, Gauge>,
    health: ProxyHealth,
    liveness: Liveness,
    /// Where the datapath counters are read at scrape time (None: no datapath metrics).
    layout: Option<PinLayout>,
    /// Traffic series per frontend and scope too, not only per service.
    per_frontend: bool,
    /// The last exposition and when it was rendered: scrapes take turns and share it (see
    /// `http`).
    scrape: tokio::sync::Mutex<Option<(std::time::Instant, axum::body::Bytes)>>,
    renders: std::sync::atomic::AtomicU64,
    state: Mutex<RunState>,
}

#[derive(Default)]
struct RunState {
    /// The programmed frontends with their labels (None before the first sync).
    frontends: Option<Arc<Vec<FrontendSeries>>>,
    /// Problems already counted in `lb_sync_errors_total{kind="invalid_object"}`.
    problems: BTreeSet<Problem>,
}

impl Metrics {
    /// `layout`: the pinned maps to read per-frontend and datapath counters from; `caps`: the
    /// maps' sizes; `health_timeout`: how old the last successful sync may be for /healthz.
    pub fn new(layout: Option<PinLayout>, caps: Capacities, health_timeout: Duration) -> Self {
        Self::with_series(layout, caps, health_timeout, false)
    }

    /// [`Metrics::new`], with traffic series per frontend and scope when `per_frontend` (five
    /// labels, four series per ClusterIP port: at 50,000 services some 400,000 series).
    pub fn with_series(
        layout: Option<PinLayout>,
        caps: Capacities,
        health_timeout: Duration,
        per_frontend: bool,
    ) -> Self {
        let mut registry = Registry::default();
        let syncs = Counter::default();
        registry.register(
            "lb_syncs",
            "Syncs of the maps to the desired state (on each change and each periodic resync)",
            syncs.clone(),
        );
        let sync_errors = Family::<OneLabel, Counter>::default();
        registry.register(
            "lb_sync_errors",
            "Problems met by syncs: map writes that failed and services refused for a full map \
             (each sync that meets them), invalid objects skipped (each once, when it appears)",
            sync_errors.clone(),
        );
        for kind in [ERR_MAP_WRITE, ERR_REFUSED_SERVICE, ERR_INVALID_OBJECT] {
            sync_errors.get_or_create(&[("kind", kind)]).inc_by(0);
        }
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "lb_programming_latency",
            "Time from a change (source update, link event, resync) to the maps written, for \
             syncs that wrote something",
            Unit::Seconds,
            latency.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let frontends = gauge(
            &mut registry,
            "lb_frontends",
            "Frontends (address, port, protocol and scope) the desired state has",
        );
        let backends = gauge(
            &mut registry,
            "lb_backends",
            "Distinct backends (address and port) in the maps, terminating ones still serving included",
        );
        let backend_sets = gauge(
            &mut registry,
            "lb_backend_sets",
            "Backend sets (service port and traffic policy) the desired state has",
        );
        let invalid_objects = gauge(
            &mut registry,
            "lb_invalid_objects",
            "Objects (or parts of them) skipped as invalid, now",
        );
        let unserved_local_endpoints = gauge(
            &mut registry,
            "lb_local_endpoints_without_pod_interface",
            "Endpoints on this node (pods, not the node's own addresses) while no pod interface is \
             attached: their pods reach no Service through lb (see --pod-iface)",
        );
        let map_entries = Family::<OneLabel, Gauge>::default();
        registry.register(
            "lb_map_entries",
            "Entries the agent has programmed in each map",
            map_entries.clone(),
        );
        let map_capacity = Family::<OneLabel, Gauge>::default();
        registry.register(
            "lb_map_capacity",
            "Size of each map the agent fills",
            map_capacity.clone(),
        );
        for map in &FILLED_MAPS {
            let labels = [("map", map.name)];
            map_capacity
                .get_or_create(&labels)
                .set((map.capacity)(&caps).into());
            map_entries.get_or_create(&labels).set(0);
        }
        let ct_flows = Family::<OneLabel, Gauge>::default();
        registry.register(
            "lb_conntrack_flows",
            "Live flows in the conntrack table by state (SYN, ESTABLISHED, CLOSING, UDP), at \
             the last collection",
            ct_flows.clone(),
        );
        let ct_capacity = Gauge::<i64>::default();
        ct_capacity.set(caps.ct.into());
        registry.register(
            "lb_conntrack_capacity",
            "Size of the TCP conntrack table: when the TCP states of lb_conntrack_flows (SYN, \
             ESTABLISHED, CLOSING) sum to it, it is full and the least recently used TCP flows \
             are evicted",
            ct_capacity,
        );
        let ct_udp_capacity = Gauge::<i64>::default();
        ct_udp_capacity.set(caps.ct_any.into());
        registry.register(
            "lb_conntrack_udp_capacity",
            "Size of the conntrack table of UDP (and other non-TCP) flows: at \
             lb_conntrack_flows{state=\"UDP\"} it is full and the least recently used UDP flows \
             are evicted (never TCP ones)",
            ct_udp_capacity,
        );
        let ct_collected = Counter::default();
        registry.register(
            "lb_conntrack_collected",
            "Expired flows the agent removed from the conntrack table (with their reply entries)",
            ct_collected.clone(),
        );
        let ct_orphans = Counter::default();
        registry.register(
            "lb_conntrack_orphans_collected",
            "Reply entries the agent removed whose flow was gone (evicted from a full table)",
            ct_orphans.clone(),
        );
        let interfaces = Family::<Labels, Gauge>::default();
        registry.register(
            "lb_interface_xdp_mode",
            "1 for each external interface with the mode its north-south program runs in \
             (native, generic XDP, or off: TC ingress); why is in the log and lbctl interfaces",
            interfaces.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                syncs,
                sync_errors,
                latency,
                frontends,
                backends,
                backend_sets,
                map_entries,
                invalid_objects,
                unserved_local_endpoints,
                ct_flows,
                ct_collected,
                ct_orphans,
                interfaces,
                health: ProxyHealth::new(health_timeout),
                liveness: Liveness::new(3 * health_timeout),
                layout,
                per_frontend,
                scrape: Default::default(),
                renders: Default::default(),
                state: Mutex::new(RunState::default()),
            }),
        }
    }

    /// The agent's health as /healthz reports it (shared with the health check servers).
    pub fn proxy_health(&self) -> ProxyHealth {
        self.inner.health.clone()
    }

    /// Whether the control loop turns, as /livez reports it.
    pub fn liveness(&self) -> Liveness {
        self.inner.liveness.clone()
    }

    /// Local pod endpoints with no pod interface attached (0 once one is).
    pub fn set_unserved_local_endpoints(&self, n: usize) {
        self.inner.unserved_local_endpoints.set(n as i64);
    }

    /// The external interface `iface` now runs in `mode` (None: lb let go of it).
    pub fn set_interface(&self, iface: &str, mode: Option<&str>) {
        for other in XdpModeUsed::ALL {
            let labels = vec![
                ("interface", iface.to_string()),
                ("mode", other.label().into()),
            ];
            self.inner.interfaces.remove(&labels);
        }
        if let Some(mode) = mode {
            let labels = vec![("interface", iface.to_string()), ("mode", mode.to_string())];
            self.inner.interfaces.get_or_create(&labels).set(1);
        }
    }

    /// After each conntrack collection.
    pub fn record_conntrack(&self, c: &crate::dataplane::conntrack::Collected) {
        for state in ["SYN", "ESTABLISHED", "CLOSING", "UDP"] {
            let n = c.live.get(state).copied().unwrap_or(0);
            self.inner
                .ct_flows
                .get_or_create(&[("state", state)])
                .set(n as i64);
        }
        self.inner.ct_collected.inc_by(c.removed);
        self.inner.ct_orphans.inc_by(c.orphans);
    }

    /// After each apply (both families'): what it did, how long after the change, the desired
    /// state and what the maps hold now, and the current problems.
    pub fn record_sync(
        &self,
        report: &Report,
        latency: Duration,
        synced: &Synced,
        problems: &BTreeSet<Problem>,
    ) {
        let m = &*self.inner;
        m.syncs.inc();
        let mut state = m.state.lock().unwrap();
        let new_problems = problems.difference(&state.problems).count();
        for (kind, n) in [
            (ERR_MAP_WRITE, report.errors.len()),
            (ERR_REFUSED_SERVICE, report.refused.len()),
            (ERR_INVALID_OBJECT, new_problems),
        ] {
            m.sync_errors
                .get_or_create(&[("kind", kind)])
                .inc_by(n as u64);
        }
        state.problems = problems.clone();
        if report.writes() > 0 {
            m.latency.observe(latency.as_secs_f64());
        }
        let (d4, d6) = (synced.desired, synced.desired6);
        m.frontends
            .set((d4.frontends.len() + d6.frontends.len()) as i64);
        m.backend_sets.set((d4.sets.len() + d6.sets.len()) as i64);
        // From the maps, not by collecting the desired sets' backends: at 50,000 services that
        // was half a million entries to sort per change.
        let backends = synced.programmed.backends.len() + synced.programmed6.backends.len();
        m.backends.set(backends as i64);
        m.invalid_objects.set(problems.len() as i64);
        for map in &FILLED_MAPS {
            let n = (map.entries)(synced);
            m.map_entries
                .get_or_create(&[("map", map.name)])
                .set(n as i64);
        }
        // The labels change only when frontends do (an endpoint change rewrites sets and
        // backends only): rebuilding them is a string per frontend, 50,000 of them at most.
        let frontends_changed = report.frontends_written + report.frontends_removed > 0;
        if state.frontends.is_none() || frontends_changed || !report.errors.is_empty() {
            let mut series = frontend_series(synced.programmed);
            series.extend(frontend_series(synced.programmed6));
            state.frontends = Some(Arc::new(series));
        }
        drop(state);
        if report.errors.is_empty() {
            m.health.updated();
        }
    }

    /// The text exposition, with the datapath counters read from the pinned maps now.
    pub fn render(&self) -> String {
        let series = self.inner.state.lock().unwrap().frontends.clone();
        let datapath = self.inner.layout.as_ref().and_then(|layout| {
            read_datapath(layout, series.as_deref().map_or(&[], |s| s))
                .inspect_err(|e| tracing::warn!("metrics: reading the datapath counters: {e:#}"))
                .ok()
        });
        self.render_with(datapath.as_ref())
    }

    /// How many times the exposition was rendered (scrapes close together share one).
    pub fn renders(&self) -> u64 {
        self.inner
            .renders
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The text exposition with these datapath counters (None: leave them out).
    pub fn render_with(&self, datapath: Option<&Datapath>) -> String {
        self.inner
            .renders
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out = String::new();
        encode_registry(&mut out, &self.inner.registry).expect("writing to a String");
        if let Some(dp) = datapath {
            let registry = datapath::datapath_registry(dp, self.inner.per_frontend);
            encode_registry(&mut out, &registry).expect("writing to a String");
        }
        encode_eof(&mut out).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests;
