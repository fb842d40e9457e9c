//! The agent's Prometheus metrics and its own health endpoints, served on `--metrics-addr`:
//! - `GET /metrics`: OpenMetrics text. Sync counters, programming latency and fill levels come
//!   from the run loop ([`Metrics::record_sync`]); per-frontend packet/byte counters and datapath
//!   event counters are read from the pinned per-CPU maps at scrape time.
//! - `GET /healthz`: 200 `ok` once a sync has been applied and the last successful one is recent
//!   (kube-proxy's healthz: stale after twice the resync interval), 503 otherwise.
//! - `GET /livez`: 200 `ok` while the control loop turns ([`Liveness`]): 503 once it has not
//!   turned for three times the healthz timeout (60 s at the defaults: a resync turns it every
//!   10 s, the longest apply measured at 50k services took 13 s).
use crate::dataplane::reconcile::Code;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use lb_common::{map_names, Counters, SCOPE_INTERNAL};
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

use crate::{
    dataplane::{
        reconcile::{Programmed, Report},
        Capacities, Maps, PinLayout, XdpModeUsed,
    },
    health::{Liveness, ProxyHealth, ProxyStatus},
    model::{Desired, Kind, Problem, Protocol},
};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `lb_sync_errors_total{kind}` values.
pub const ERR_MAP_WRITE: &str = "map_write";
pub const ERR_REFUSED_SERVICE: &str = "refused_service";
pub const ERR_INVALID_OBJECT: &str = "invalid_object";

type OneLabel = [(&'static str, &'static str); 1];
type Labels = Vec<(&'static str, String)>;

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
    state: Mutex<RunState>,
}

#[derive(Default)]
struct RunState {
    /// The programmed frontends with their labels (None before the first sync).
    frontends: Option<Arc<Vec<FrontendSeries>>>,
    /// Problems already counted in `lb_sync_errors_total{kind="invalid_object"}`.
    problems: BTreeSet<Problem>,
}

/// One programmed frontend: its labels and where the kernel counts its traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSeries {
    pub labels: Labels,
    pub stats_id: u32,
}

/// Counters read from the kernel for one scrape.
#[derive(Clone, Debug, Default)]
pub struct Datapath {
    pub frontends: Vec<(FrontendSeries, Counters)>,
    pub events: BTreeMap<&'static str, u64>,
    /// Transmit drops by external interface name.
    pub xmit_drops: Vec<(String, u64)>,
}

impl Metrics {
    /// `layout`: the pinned maps to read per-frontend and datapath counters from; `caps`: the
    /// maps' sizes; `health_timeout`: how old the last successful sync may be for /healthz.
    pub fn new(layout: Option<PinLayout>, caps: Capacities, health_timeout: Duration) -> Self {
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
        for (map, size) in [
            (map_names::FRONTENDS4, caps.frontends),
            (map_names::SERVICES, caps.services),
            (map_names::SLOTS, caps.slots),
            (map_names::BACKENDS4, caps.backends),
        ] {
            map_capacity.get_or_create(&[("map", map)]).set(size.into());
            map_entries.get_or_create(&[("map", map)]).set(0);
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

    /// After each conntrack collection.
    /// The external interface `iface` now runs in `mode` (None: lb let go of it).
    /// Local pod endpoints with no pod interface attached (0 once one is).
    pub fn set_unserved_local_endpoints(&self, n: usize) {
        self.inner.unserved_local_endpoints.set(n as i64);
    }

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

    /// After each apply: what it did, how long after the change, the desired state, what the
    /// maps hold now, and the current problems.
    pub fn record_sync(
        &self,
        report: &Report,
        latency: Duration,
        desired: &Desired,
        programmed: &Programmed,
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
        m.frontends.set(desired.frontends.len() as i64);
        m.backend_sets.set(desired.sets.len() as i64);
        // From the maps, not by collecting the desired sets' backends: at 50,000 services that
        // was half a million entries to sort per change.
        m.backends.set(programmed.backends.len() as i64);
        m.invalid_objects.set(problems.len() as i64);
        let slots: usize = programmed.sets.values().map(|s| s.slots.len()).sum();
        for (map, n) in [
            (map_names::FRONTENDS4, programmed.frontends.len()),
            (map_names::SERVICES, programmed.sets.len()),
            (map_names::SLOTS, slots),
            (map_names::BACKENDS4, programmed.backends.len()),
        ] {
            m.map_entries.get_or_create(&[("map", map)]).set(n as i64);
        }
        // The labels change only when frontends do (an endpoint change rewrites sets and
        // backends only): rebuilding them is a string per frontend, 50,000 of them at most.
        let frontends_changed = report.frontends_written + report.frontends_removed > 0;
        if state.frontends.is_none() || frontends_changed || !report.errors.is_empty() {
            state.frontends = Some(Arc::new(frontend_series(programmed)));
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

    /// The text exposition with these datapath counters (None: leave them out).
    pub fn render_with(&self, datapath: Option<&Datapath>) -> String {
        let mut out = String::new();
        encode_registry(&mut out, &self.inner.registry).expect("writing to a String");
        if let Some(dp) = datapath {
            encode_registry(&mut out, &datapath_registry(dp)).expect("writing to a String");
        }
        encode_eof(&mut out).expect("writing to a String");
        out
    }
}

/// Labels for each programmed frontend: service, port_name, frontend (ip:port/PROTO), kind and
/// scope (external: from outside the node; internal: from a pod on this node, each counted
/// apart by the kernel).
pub fn frontend_series(programmed: &Programmed) -> Vec<FrontendSeries> {
    let mut out: Vec<FrontendSeries> = programmed
        .frontends
        .iter()
        .filter_map(|(key, fe)| {
            let set = programmed.sets.get(&fe.service_id)?.key.as_ref()?;
            let ip = Ipv4Addr::from(key.addr.to_ne_bytes());
            let port = u16::from_be(key.port);
            let proto = Protocol::from_code(key.proto).map_or("unknown", Protocol::as_str);
            let kind = Kind::from_code(fe.kind).map_or("unknown", Kind::as_str);
            let scope = if key.scope == SCOPE_INTERNAL {
                "internal"
            } else {
                "external"
            };
            let labels = vec![
                ("service", set.service.to_string()),
                ("port_name", set.port_name.clone()),
                ("frontend", format!("{ip}:{port}/{proto}")),
                ("kind", kind.to_string()),
                ("scope", scope.to_string()),
            ];
            Some(FrontendSeries {
                labels,
                stats_id: fe.stats_id,
            })
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// Open the pinned maps and read the counters of these frontends and the datapath events.
pub fn read_datapath(layout: &PinLayout, series: &[FrontendSeries]) -> Result<Datapath> {
    let maps = Maps::open_pinned(layout).context("opening the pinned maps")?;
    let mut frontends = Vec::with_capacity(series.len());
    for s in series {
        // A frontend removed since the labels were taken has no entry to read: leave it out.
        if let Ok(c) = maps.frontend_counters(s.stats_id) {
            frontends.push((s.clone(), c));
        }
    }
    let xmit_drops = crate::dataplane::maps::entries(&maps.ifaces)?
        .into_iter()
        .filter_map(|(ifindex, info)| Some((info.name().to_string(), maps.xmit_drops(ifindex)?)))
        .collect();
    Ok(Datapath {
        frontends,
        events: maps.global_counters()?,
        xmit_drops,
    })
}

fn datapath_registry(dp: &Datapath) -> Registry {
    let mut registry = Registry::default();
    let packets = Family::<Labels, Counter>::default();
    registry.register(
        "lb_frontend_packets",
        "Packets the datapath steered through each frontend",
        packets.clone(),
    );
    let bytes = Family::<Labels, Counter>::default();
    registry.register(
        "lb_frontend_bytes",
        "Bytes the datapath steered through each frontend",
        bytes.clone(),
    );
    for (s, c) in &dp.frontends {
        packets.get_or_create(&s.labels).inc_by(c.packets);
        bytes.get_or_create(&s.labels).inc_by(c.bytes);
    }
    let events = Family::<OneLabel, Counter>::default();
    registry.register(
        "lb_datapath_events",
        "Datapath events: rejects, drops by reason, conntrack and reverse-NAT hits",
        events.clone(),
    );
    for (name, n) in &dp.events {
        events.get_or_create(&[("event", name)]).inc_by(*n);
    }
    let xmit = Family::<Labels, Counter>::default();
    registry.register(
        "lb_xdp_transmit_drops",
        "Frames lb's XDP program transmitted (XDP_TX, XDP_REDIRECT) on each external interface \
         that the kernel dropped: the driver could not deliver them (native XDP on a veth whose \
         peer runs no XDP program, a device without XDP transmit, a full queue)",
        xmit.clone(),
    );
    for (iface, n) in &dp.xmit_drops {
        xmit.get_or_create(&vec![("interface", iface.clone())])
            .inc_by(*n);
    }
    registry
}

/// Serve /metrics, /healthz and /livez on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on --metrics-addr {addr}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /livez");
    serve_on(listener, metrics).await
}

/// [`serve`], trying again every 5 s while the address cannot be bound (as kube-proxy does):
/// metrics are never a reason to stop programming the dataplane.
pub async fn serve_retrying(addr: SocketAddr, metrics: Metrics) {
    let mut logged = None;
    loop {
        if let Err(e) = serve(addr, metrics.clone()).await {
            let msg = format!("{e:#}");
            if logged.as_ref() != Some(&msg) {
                tracing::error!("metrics server: {msg}; retrying every 5 s");
                logged = Some(msg);
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

pub async fn serve_on(listener: tokio::net::TcpListener, metrics: Metrics) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(metrics);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    // Map reads are syscalls: keep them off the runtime's worker threads.
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("rendering metrics: {e}\n"),
        ),
    }
}

async fn livez(State(metrics): State<Metrics>) -> impl IntoResponse {
    livez_reply(metrics.inner.liveness.stalled())
}

pub fn livez_reply(stalled: Option<Duration>) -> (StatusCode, String) {
    match stalled {
        None => (StatusCode::OK, "ok".into()),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: the control loop has not turned for {:.0} s\n",
                age.as_secs_f64()
            ),
        ),
    }
}

async fn healthz(State(metrics): State<Metrics>) -> impl IntoResponse {
    healthz_reply(metrics.inner.health.status())
}

pub fn healthz_reply(status: ProxyStatus) -> (StatusCode, String) {
    match status {
        ProxyStatus::Healthy(_) => (StatusCode::OK, "ok".into()),
        ProxyStatus::NotSynced => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no sync applied yet\n".into(),
        ),
        ProxyStatus::Stale(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: the last successful sync was {:.1} s ago\n",
                age.as_secs_f64()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::Ipv4Addr};

    use lb_common::{Backend4, Frontend4, Frontend4Key, Service, SCOPE_EXTERNAL};

    use super::*;
    use crate::{
        dataplane::reconcile::ProgrammedSet,
        model::{
            Backend, BackendSet, Frontend, FrontendKey, ObjectRef, Policy, Scope, SetKey, Verdict,
        },
    };

    const CAPS: Capacities = Capacities {
        frontends: 16,
        services: 8,
        slots: 32,
        backends: 4,
        ct: 64,
        ct_any: 32,
    };

    fn set_key() -> SetKey {
        SetKey {
            service: ObjectRef::new("shop", "web"),
            port_name: "http".into(),
            proto: Protocol::Tcp,
            policy: Policy::Cluster,
        }
    }

    fn desired() -> Desired {
        let mut d = Desired::default();
        let be = |ip: [u8; 4]| Backend {
            ip: Ipv4Addr::from(ip),
            port: 8080,
            local: true,
            terminating: false,
        };
        d.sets.insert(
            set_key(),
            BackendSet {
                backends: vec![be([10, 244, 1, 5]), be([10, 244, 1, 7])],
                affinity_timeout: None,
                external_local: false,
                internal_local: false,
                verdict: Verdict::Reject,
            },
        );
        for scope in [Scope::External, Scope::Internal] {
            let key = FrontendKey {
                ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                proto: Protocol::Tcp,
                scope,
            };
            let fe = Frontend {
                set: set_key(),
                kind: Kind::ClusterIp,
                source_ranges: None,
            };
            d.frontends.insert(key, fe);
        }
        d
    }

    fn programmed() -> Programmed {
        let mut p = Programmed::default();
        for (scope, stats_id) in [(SCOPE_EXTERNAL, 1), (SCOPE_INTERNAL, 2)] {
            let key = Frontend4Key {
                addr: u32::from_ne_bytes([10, 96, 0, 10]),
                port: 80u16.to_be(),
                proto: lb_common::PROTO_TCP,
                scope,
            };
            let fe = Frontend4 {
                service_id: 7,
                stats_id,
                kind: lb_common::KIND_CLUSTER_IP,
                flags: 0,
                _pad: [0; 2],
            };
            p.frontends.insert(key, fe);
        }
        let set = ProgrammedSet {
            key: Some(set_key()),
            service: Service {
                backend_count: 0,
                affinity_timeout: 0,
                flags: 0,
                verdict: 0,
                _pad: [0; 2],
            },
            slots: vec![1, 2],
        };
        p.sets = HashMap::from([(7, set)]);
        for id in [1, 2] {
            let be = Backend4 {
                addr: 0,
                port: 0,
                flags: 0,
                _pad: 0,
            };
            p.backends.insert(id, be);
        }
        p
    }

    fn problem(name: &str) -> Problem {
        Problem {
            object: format!("Service shop/{name}"),
            field: "spec.ports[0].port".into(),
            message: "out of range".into(),
        }
    }

    /// The value of the sample line starting with `prefix` (name and labels).
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn an_interface_has_one_mode_series_until_let_go() {
        let m = Metrics::new(None, CAPS, Duration::from_secs(20));
        // Sorted: a Family renders in hash order.
        let series = |m: &Metrics| -> Vec<String> {
            let mut lines: Vec<String> = m
                .render()
                .lines()
                .filter(|l| l.starts_with("lb_interface_xdp_mode{"))
                .map(str::to_string)
                .collect();
            lines.sort();
            lines
        };
        m.set_interface("eth0", Some("native"));
        m.set_interface("eth0", Some("generic"));
        m.set_interface("eth1", Some("native"));
        assert_eq!(
            series(&m),
            [
                "lb_interface_xdp_mode{interface=\"eth0\",mode=\"generic\"} 1",
                "lb_interface_xdp_mode{interface=\"eth1\",mode=\"native\"} 1",
            ]
        );
        m.set_interface("eth0", None);
        assert_eq!(
            series(&m),
            ["lb_interface_xdp_mode{interface=\"eth1\",mode=\"native\"} 1"]
        );
    }

    #[test]
    fn renders_sync_metrics() {
        let m = Metrics::new(None, CAPS, Duration::from_secs(20));
        let text = m.render();
        assert_eq!(sample(&text, "lb_syncs_total "), Some(0.0), "{text}");
        assert_eq!(
            sample(&text, "lb_map_capacity{map=\"LB4_FRONTENDS\"} "),
            Some(16.0)
        );
        assert!(text.ends_with("# EOF\n"));

        let report = Report {
            frontends_written: 2,
            refused: vec![(ObjectRef::new("shop", "big"), map_names::BACKENDS4)],
            errors: vec!["backend 3: boom".into()],
            ..Default::default()
        };
        let problems = BTreeSet::from([problem("a"), problem("b")]);
        let (d, p) = (desired(), programmed());
        m.record_sync(&report, Duration::from_millis(3), &d, &p, &problems);
        // The same problems again count once; one new one counts.
        let problems = BTreeSet::from([problem("a"), problem("b"), problem("c")]);
        m.record_sync(&Report::default(), Duration::ZERO, &d, &p, &problems);
        let text = m.render();
        for (prefix, want) in [
            ("lb_syncs_total ", 2.0),
            ("lb_sync_errors_total{kind=\"map_write\"} ", 1.0),
            ("lb_sync_errors_total{kind=\"refused_service\"} ", 1.0),
            ("lb_sync_errors_total{kind=\"invalid_object\"} ", 3.0),
            ("lb_programming_latency_seconds_count ", 1.0),
            ("lb_programming_latency_seconds_bucket{le=\"0.004\"} ", 1.0),
            ("lb_programming_latency_seconds_bucket{le=\"0.002\"} ", 0.0),
            ("lb_frontends ", 2.0),
            ("lb_backends ", 2.0),
            ("lb_backend_sets ", 1.0),
            ("lb_invalid_objects ", 3.0),
            ("lb_map_entries{map=\"LB4_FRONTENDS\"} ", 2.0),
            ("lb_map_entries{map=\"LB_SLOTS\"} ", 2.0),
            ("lb_map_entries{map=\"LB4_BACKENDS\"} ", 2.0),
            ("lb_map_capacity{map=\"LB_SLOTS\"} ", 32.0),
        ] {
            assert_eq!(sample(&text, prefix), Some(want), "{prefix}\n{text}");
        }
        assert!(text.contains("# TYPE lb_programming_latency_seconds histogram"));
        assert!(!text.contains("lb_frontend_packets"), "no datapath: {text}");

        let mut collected = crate::dataplane::conntrack::Collected::default();
        collected.live.insert("ESTABLISHED", 5);
        collected.removed = 2;
        collected.orphans = 1;
        m.record_conntrack(&collected);
        m.record_conntrack(&collected);
        let text = m.render();
        for (prefix, want) in [
            ("lb_conntrack_capacity ", 64.0),
            ("lb_conntrack_udp_capacity ", 32.0),
            ("lb_conntrack_flows{state=\"ESTABLISHED\"} ", 5.0),
            ("lb_conntrack_flows{state=\"UDP\"} ", 0.0),
            ("lb_conntrack_collected_total ", 4.0),
            ("lb_conntrack_orphans_collected_total ", 2.0),
        ] {
            assert_eq!(sample(&text, prefix), Some(want), "{prefix}\n{text}");
        }
    }

    #[test]
    fn renders_datapath_counters_per_frontend() {
        let m = Metrics::new(None, CAPS, Duration::from_secs(20));
        let series = frontend_series(&programmed());
        assert_eq!(series.len(), 2);
        assert_eq!(
            series[0].labels,
            vec![
                ("service", "shop/web".to_string()),
                ("port_name", "http".into()),
                ("frontend", "10.96.0.10:80/TCP".into()),
                ("kind", "ClusterIP".into()),
                ("scope", "external".into()),
            ]
        );
        let dp = Datapath {
            frontends: vec![
                (
                    series[0].clone(),
                    Counters {
                        packets: 5,
                        bytes: 300,
                    },
                ),
                (
                    series[1].clone(),
                    Counters {
                        packets: 1,
                        bytes: 60,
                    },
                ),
            ],
            events: BTreeMap::from([("ct_new", 4), ("reject_no_backend", 0)]),
            xmit_drops: vec![("eth0".into(), 7)],
        };
        let text = m.render_with(Some(&dp));
        let labels = "service=\"shop/web\",port_name=\"http\",frontend=\"10.96.0.10:80/TCP\",\
                      kind=\"ClusterIP\"";
        for (prefix, want) in [
            (
                format!("lb_frontend_packets_total{{{labels},scope=\"external\"}} "),
                5.0,
            ),
            (
                format!("lb_frontend_packets_total{{{labels},scope=\"internal\"}} "),
                1.0,
            ),
            (
                format!("lb_frontend_bytes_total{{{labels},scope=\"external\"}} "),
                300.0,
            ),
            ("lb_datapath_events_total{event=\"ct_new\"} ".into(), 4.0),
            (
                "lb_datapath_events_total{event=\"reject_no_backend\"} ".into(),
                0.0,
            ),
            (
                "lb_xdp_transmit_drops_total{interface=\"eth0\"} ".into(),
                7.0,
            ),
        ] {
            assert_eq!(sample(&text, &prefix), Some(want), "{prefix}\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn healthz_follows_syncs() {
        let m = Metrics::new(None, CAPS, Duration::from_secs(20));
        assert_eq!(
            healthz_reply(m.proxy_health().status()).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let failed = Report {
            errors: vec!["boom".into()],
            ..Default::default()
        };
        let none = BTreeSet::new();
        m.record_sync(&failed, Duration::ZERO, &desired(), &programmed(), &none);
        assert!(
            !m.proxy_health().is_healthy(),
            "a failed sync is not an update"
        );
        m.record_sync(
            &Report::default(),
            Duration::ZERO,
            &desired(),
            &programmed(),
            &none,
        );
        assert_eq!(
            healthz_reply(m.proxy_health().status()),
            (StatusCode::OK, "ok".to_string())
        );
        let stale = Metrics::new(None, CAPS, Duration::ZERO);
        stale.record_sync(
            &Report::default(),
            Duration::ZERO,
            &desired(),
            &programmed(),
            &none,
        );
        assert_eq!(
            healthz_reply(stale.proxy_health().status()).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_metrics_healthz_and_livez() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new(None, CAPS, Duration::from_secs(20));
        tokio::spawn(serve_on(listener, m.clone()));
        let get_from = |addr: std::net::SocketAddr, path: &'static str| {
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
                s.write_all(req.as_bytes()).unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
        };
        let get = |path: &'static str| get_from(addr, path);
        let status = |reply: &str| reply.split(' ').nth(1).unwrap_or_default().to_string();
        assert_eq!(status(&get("/livez").await.unwrap()), "200");
        assert_eq!(status(&get("/healthz").await.unwrap()), "503");
        let none = BTreeSet::new();
        m.record_sync(
            &Report::default(),
            Duration::ZERO,
            &desired(),
            &programmed(),
            &none,
        );
        let healthz = get("/healthz").await.unwrap();
        assert_eq!(status(&healthz), "200");
        assert!(healthz.ends_with("\r\n\r\nok"), "{healthz}");
        let metrics = get("/metrics").await.unwrap();
        assert_eq!(status(&metrics), "200", "{metrics}");
        assert!(metrics.contains(CONTENT_TYPE), "{metrics}");
        assert!(metrics.contains("\nlb_syncs_total 1\n"), "{metrics}");

        // A loop that stopped turning: /livez fails (a zero health timeout makes any turn old).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stalled_addr = listener.local_addr().unwrap();
        let stalled = Metrics::new(None, CAPS, Duration::ZERO);
        tokio::spawn(serve_on(listener, stalled.clone()));
        stalled.liveness().turned();
        let reply = get_from(stalled_addr, "/livez").await.unwrap();
        assert_eq!(status(&reply), "503", "{reply}");
        assert!(reply.contains("control loop has not turned"), "{reply}");
    }
}
