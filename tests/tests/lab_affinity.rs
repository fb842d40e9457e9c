//! Session affinity and endpoint removal through the real lb-agent, mirroring Kubernetes' e2e
//! Service tests (issue 4 §4): three pods behind `shop/web` (ClusterIP 10.96.0.10, TCP 80 →
//! 8080 with NodePort 30080, UDP 53 → 8080), a client pod that is no backend, and an outside
//! client; every change is a manifest edit, the kernel maps are only read (lbctl) to know when the
//! agent has applied one.
//!
//! - ClientIP affinity: 15 consecutive new connections from one client reach the same pod,
//!   through the ClusterIP (from a pod) and through the NodePort (from outside).
//! - ClientIP → None spreads new connections over at least two pods; back to ClientIP is sticky
//!   again.
//! - timeoutSeconds: 2: sticky within the timeout, a new choice after it.
//! - A UDP 5-tuple whose backend's endpoint is deleted is answered by another pod within 2 s.
//!
//! The last item of §4, a TCP connection to an endpoint that turns terminating keeps working
//! while new connections go elsewhere, is lab_agent.rs's
//! `a_terminating_pod_keeps_its_connections_and_takes_no_new_ones`.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    agent_lab::{addr, answer, local_endpoints, web_manifest, AgentLab, CLUSTER_IP, NODE_IP},
    lab::{poll_until, require_privileged, ChildGuard, Netns},
    topology::pod,
};

const PODS: [(&str, &str, &str); 3] = [
    ("pod1", "10.244.1.5", "h1"),
    ("pod2", "10.244.1.6", "h2"),
    ("pod3", "10.244.1.7", "h3"),
];
/// The client pod: on the node, not a backend of the service.
const TESTER: &str = "10.244.1.20";
/// How many consecutive new connections must agree (as in the Kubernetes e2e tests).
const STICKY_RUN: usize = 15;

/// `spec.sessionAffinity: ClientIP` with the default timeout.
const CLIENT_IP: &str = "sessionAffinity: ClientIP";
const NO_AFFINITY: &str = "sessionAffinity: None";

/// `spec.sessionAffinity: ClientIP` with `timeoutSeconds`.
fn client_ip_for(secs: u32) -> String {
    format!(
        "sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {secs}}}}}"
    )
}

/// `shop/web` with `affinity` (spec lines) and ready endpoints `backends` on this node.
fn web(affinity: &str, backends: &[&str]) -> String {
    web_manifest(affinity, &local_endpoints(backends))
}

fn all_pods() -> Vec<&'static str> {
    PODS.iter().map(|p| p.1).collect()
}

/// The pod name serving `ip`.
fn pod_name(ip: &str) -> &'static str {
    PODS.iter().find(|p| p.1 == ip).expect("a pod address").0
}

fn pod_ip(name: &str) -> &'static str {
    PODS.iter().find(|p| p.0 == name).expect("a pod name").1
}

struct Setup {
    s: AgentLab,
    /// The client pod.
    tester: Netns,
    _agent: ChildGuard,
}

/// The lab with `manifest` written and the agent serving it (the ClusterIP answers the tester).
fn start(test: &str, manifest: &str) -> Setup {
    let s = AgentLab::new(test, env!("CARGO_BIN_EXE_lb-echo"), &PODS).expect("lab");
    let tester = pod(&s.lab, &s.node, "tester", TESTER, "h9").expect("tester pod");
    s.write("web.yaml", manifest);
    let agent = s.start_agent("agent").expect("lb-agent");
    let up = poll_until(Duration::from_secs(10), || {
        answer(&tester, vip(), false).map(drop)
    });
    assert!(up.is_some(), "the service answers:\n{}", agent.stderr());
    Setup {
        s,
        tester,
        _agent: agent,
    }
}

fn vip() -> SocketAddr {
    addr(CLUSTER_IP, 80)
}

fn nodeport() -> SocketAddr {
    addr(NODE_IP, 30080)
}

/// `n` new connections from `from` to `to`, one after the other: who answered each.
fn answers(from: &Netns, to: SocketAddr, n: usize) -> Vec<Option<String>> {
    (0..n).map(|_| answer(from, to, false)).collect()
}

/// Asserts that [`STICKY_RUN`] consecutive new connections reach one pod; returns it.
fn assert_sticky(from: &Netns, to: SocketAddr, what: &str) -> String {
    let got = answers(from, to, STICKY_RUN);
    let first = got[0]
        .clone()
        .unwrap_or_else(|| panic!("{what}: no answer"));
    assert!(
        got.iter().all(|g| g.as_deref() == Some(&first)),
        "{what}: {STICKY_RUN} new connections from {} should all reach {first}: {got:?}",
        from.name()
    );
    first
}

/// Waits until every frontend of `shop/web` port `http` shows `timeout` as its session affinity
/// (None: no affinity), i.e. the agent has applied the edit; returns how long that took.
fn until_affinity(s: &AgentLab, timeout: Option<u64>, within: Duration) -> Duration {
    let start = Instant::now();
    let mut last = serde_json::Value::Null;
    let applied = poll_until(within, || {
        last = s.lbctl_json(&["services"]).ok()?;
        let http: Vec<&serde_json::Value> = last
            .as_array()?
            .iter()
            .filter(|r| r["service"] == "shop/web" && r["port_name"] == "http")
            .collect();
        (!http.is_empty()
            && http
                .iter()
                .all(|r| r["session_affinity_timeout"].as_u64() == timeout))
        .then_some(())
    });
    assert!(
        applied.is_some(),
        "session affinity {timeout:?} not applied within {within:?}: {last:#}"
    );
    start.elapsed()
}

#[test]
fn client_ip_affinity_keeps_one_client_on_one_pod_through_clusterip_and_nodeport() {
    if !require_privileged("lab_affinity") {
        return;
    }
    let t = start("lab-affinity-sticky", &web(CLIENT_IP, &all_pods()));
    until_affinity(&t.s, Some(10_800), Duration::from_secs(2));
    let pod = assert_sticky(&t.tester, vip(), "ClusterIP from a pod");
    eprintln!("ClusterIP: the tester pod sticks to {pod}");
    let pod = assert_sticky(&t.s.client, nodeport(), "NodePort from outside");
    eprintln!("NodePort: the outside client sticks to {pod}");
}

#[test]
fn switching_affinity_off_spreads_new_connections_and_back_on_sticks_again() {
    if !require_privileged("lab_affinity") {
        return;
    }
    let t = start("lab-affinity-switch", &web(CLIENT_IP, &all_pods()));
    let sticky = assert_sticky(&t.tester, vip(), "ClientIP");

    // ClientIP → None: once the agent has applied it, new connections spread at once.
    t.s.write("web.yaml", &web(NO_AFFINITY, &all_pods()));
    let took = until_affinity(&t.s, None, Duration::from_secs(2));
    eprintln!("affinity off applied in {took:?}");
    let mut seen = BTreeSet::new();
    let mut tries = 0;
    while seen.len() < 2 && tries < 60 {
        tries += 1;
        seen.insert(answer(&t.tester, vip(), false).expect("an answer"));
    }
    assert!(
        seen.len() >= 2,
        "without affinity {tries} new connections should reach at least two pods (sticky was \
         {sticky}): {seen:?}"
    );
    eprintln!("without affinity: {seen:?} within {tries} connections");

    // None → ClientIP: sticky again for every new connection once applied.
    t.s.write("web.yaml", &web(CLIENT_IP, &all_pods()));
    let took = until_affinity(&t.s, Some(10_800), Duration::from_secs(2));
    eprintln!("affinity on applied in {took:?}");
    let again = assert_sticky(&t.tester, vip(), "ClientIP again");
    eprintln!("ClientIP again: sticks to {again} (first sticky: {sticky})");
}

#[test]
fn affinity_expires_after_timeout_seconds() {
    if !require_privileged("lab_affinity") {
        return;
    }
    let t = start("lab-affinity-timeout", &web(&client_ip_for(2), &all_pods()));
    until_affinity(&t.s, Some(2), Duration::from_secs(2));
    let sticky = assert_sticky(&t.tester, vip(), "timeoutSeconds 2");

    // Idle for half the timeout: still sticky (the deliberate wait is what is under test).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        answer(&t.tester, vip(), false).as_deref(),
        Some(sticky.as_str()),
        "within timeoutSeconds the client stays on its pod"
    );

    // Idle past the timeout: the entry has expired and the next connection is a fresh random
    // choice. It may pick the same pod (1 in 3), so repeat until another pod answers; with an
    // entry that never expired it never would. A false failure takes (1/3)^8.
    let mut rounds = Vec::new();
    for _ in 0..8 {
        // The deliberate idle wait under test: longer than timeoutSeconds.
        std::thread::sleep(Duration::from_millis(2300));
        let got = answer(&t.tester, vip(), false).expect("an answer after the idle wait");
        rounds.push(got.clone());
        if got != sticky {
            break;
        }
    }
    let last = rounds.last().expect("a round");
    assert_ne!(
        last, &sticky,
        "after the timeout new choices are made, but every round went to {sticky}: {rounds:?}"
    );
    eprintln!("sticky {sticky}, after expiry: {rounds:?}");
    // The new choice is sticky in turn.
    let now = assert_sticky(&t.tester, vip(), "the new choice");
    assert_eq!(&now, last, "the choice made after expiry is recorded");
}

#[test]
fn a_udp_flow_whose_endpoint_is_deleted_moves_to_another_pod_within_2s() {
    if !require_privileged("lab_affinity") {
        return;
    }
    let t = start("lab-affinity-udp", &web(NO_AFFINITY, &all_pods()));
    let dns = addr(CLUSTER_IP, 53);
    let up = poll_until(Duration::from_secs(2), || answer(&t.tester, dns, true));
    assert!(up.is_some(), "the UDP port answers");

    let mut conn = t
        .tester
        .echo_conn(dns, true, Duration::from_secs(2))
        .expect("a UDP socket");
    let local = conn.local_addr();
    let first = conn.ask(Duration::from_secs(2)).expect("first answer");
    let x = first.name.clone();
    for _ in 0..5 {
        let r = conn.ask(Duration::from_secs(2)).expect("an answer");
        assert_eq!(r.name, x, "one 5-tuple stays on one pod");
    }

    // X's endpoint deleted: the same 5-tuple is answered by another pod within 2 s of the write.
    let rest: Vec<&str> = all_pods()
        .into_iter()
        .filter(|ip| *ip != pod_ip(&x))
        .collect();
    let written = Instant::now();
    t.s.write("web.yaml", &web(NO_AFFINITY, &rest));
    let deadline = Duration::from_secs(2);
    let mut last = None;
    let moved = poll_until(deadline, || {
        let left = deadline.saturating_sub(written.elapsed());
        let r = conn.ask(left.min(Duration::from_millis(300)));
        last = Some(r.clone());
        r.ok().filter(|r| r.name != x)
    });
    let took = written.elapsed();
    let moved = moved.unwrap_or_else(|| {
        panic!("the flow on {x} did not move within {deadline:?} of the edit; last {last:?}")
    });
    assert!(
        took <= deadline,
        "moved after {took:?}, more than {deadline:?}"
    );
    assert_ne!(moved.name, x);
    assert!(
        rest.iter().any(|ip| pod_name(ip) == moved.name),
        "{} is one of the remaining pods",
        moved.name
    );
    eprintln!(
        "UDP flow {local} moved from {x} to {} in {took:?}",
        moved.name
    );

    // Still the same 5-tuple (the pod saw our own address and port), and it stays on the new pod.
    assert_eq!(moved.peer, local, "the same 5-tuple reached the new pod");
    for _ in 0..5 {
        let r = conn.ask(Duration::from_secs(2)).expect("an answer");
        assert_eq!(r.name, moved.name, "the moved flow stays on its new pod");
        assert_eq!(r.peer, local);
    }
}
