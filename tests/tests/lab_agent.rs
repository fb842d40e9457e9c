//! lb-agent in manifests mode, driven through its command line as a user would: one node with
//! two routed pods and an outside client, real TCP and UDP through the ClusterIP and NodePort.
//! Edits to the files move traffic within 1 s, a bad manifest leaves the rest working, and a
//! kill -9 of the agent in the middle of a stream of new connections fails none of them.
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use lb_tests::{
    agent_lab::{
        addr, answer, local_endpoints, until_answer, web_manifest, AgentLab, CLUSTER_IP, NODE,
        NODE_IP,
    },
    lab::{poll_until, require_privileged, scaled, ChildGuard, EchoConn, StopOnDrop},
    topology::{agent_bin, pod},
};

const POD1: &str = "10.244.1.5";
const POD2: &str = "10.244.1.7";

fn setup(name: &str) -> AgentLab {
    let pods = [("pod1", POD1, "h1"), ("pod2", POD2, "h2")];
    AgentLab::new(name, env!("CARGO_BIN_EXE_lb-echo"), &pods).expect("lab")
}

/// A lab with the agent running on `web` → pod1, serving already.
fn started(name: &str) -> (AgentLab, ChildGuard) {
    let s = setup(name);
    s.write("web.yaml", &web(&[POD1]));
    let agent = s.start_agent("agent").expect("lb-agent");
    let vip = addr(CLUSTER_IP, 80);
    until_answer(
        &s.pods[1],
        vip,
        false,
        Some("pod1"),
        Duration::from_secs(10),
    );
    (s, agent)
}

/// Once the agent serves `nodeport` (to pod1 only), a connection from the client held open,
/// known to reach pod1.
fn connection_to_pod1(s: &AgentLab, nodeport: SocketAddr) -> EchoConn {
    until_answer(
        &s.client,
        nodeport,
        false,
        Some("pod1"),
        Duration::from_secs(10),
    );
    let mut held = s
        .client
        .echo_conn(nodeport, false, Duration::from_secs(2))
        .expect("a connection to pod1");
    assert_eq!(held.ask(Duration::from_secs(2)).expect("held").name, "pod1");
    held
}

/// Service `shop/web` to ready `backends` on this node.
fn web(backends: &[&str]) -> String {
    web_manifest("", &local_endpoints(backends))
}

/// `shop/web` with the given `endpoints:` list (YAML lines).
fn web_with(endpoints: &str) -> String {
    web_manifest("", endpoints)
}

#[test]
fn agent_follows_manifest_edits_and_survives_bad_ones() {
    if !require_privileged("lab_agent") {
        return;
    }
    let (s, agent) = started("lab-agent-edit");
    let vip = addr(CLUSTER_IP, 80);
    until_answer(
        &s.pods[1],
        addr(CLUSTER_IP, 53),
        true,
        Some("pod1"),
        Duration::from_secs(1),
    );
    let nodeport = addr(NODE_IP, 30080);
    until_answer(
        &s.client,
        nodeport,
        false,
        Some("pod1"),
        Duration::from_secs(1),
    );

    s.write("web.yaml", &web(&[POD2]));
    let took = until_answer(&s.pods[0], vip, false, Some("pod2"), Duration::from_secs(1));
    eprintln!("edit → traffic moved in {took:?}");
    until_answer(
        &s.client,
        nodeport,
        false,
        Some("pod2"),
        Duration::from_secs(1),
    );

    // Garbage in one file, an invalid Service beside a valid one in another: the valid ones work.
    s.write("broken.yaml", "kind: Service\n  metadata: [unclosed\n");
    let api = "apiVersion: v1
kind: Service
metadata: {name: bad-port, namespace: shop}
spec: {clusterIP: 10.96.0.21, ports: [{port: 70000}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.1.5], nodeName: node-a}]
";
    s.write("api.yaml", api);
    until_answer(
        &s.pods[1],
        addr("10.96.0.20", 80),
        false,
        Some("pod1"),
        Duration::from_secs(1),
    );
    assert_eq!(answer(&s.pods[0], vip, false).as_deref(), Some("pod2"));
    let logged = poll_until(Duration::from_secs(1), || {
        let err = agent.stderr();
        (err.contains("shop/bad-port")
            && err.contains("spec.ports[0].port")
            && err.contains("broken.yaml"))
        .then_some(())
    });
    assert!(
        logged.is_some(),
        "errors name the object and field:\n{}",
        agent.stderr()
    );

    // A file removed: its service goes away.
    std::fs::remove_file(s.manifests.join("web.yaml")).expect("remove web.yaml");
    until_answer(&s.pods[0], vip, false, None, Duration::from_secs(1));
    assert_eq!(
        answer(&s.pods[1], addr("10.96.0.20", 80), false).as_deref(),
        Some("pod1")
    );
}

#[test]
fn agent_kill_9_and_restart_fail_no_new_connection() {
    if !require_privileged("lab_agent") {
        return;
    }
    let s = setup("lab-agent-kill");
    s.write("web.yaml", &web(&[POD1]));
    let first = s.start_agent("agent-1").expect("lb-agent");
    let nodeport = addr(NODE_IP, 30080);
    let mut held = connection_to_pod1(&s, nodeport);

    let mut second = None;
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        // A failing assertion below must stop the loop too, or the scope waits for it forever.
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match s.client.request(nodeport, false, Duration::from_secs(2)) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("connection failed: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        let before = poll_until(Duration::from_secs(5), || {
            (ok.load(Ordering::Relaxed) >= 20).then_some(())
        });
        assert!(before.is_some(), "the loop runs");
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
        let at_kill = ok.load(Ordering::Relaxed);
        second = Some(s.start_agent("agent-2").expect("lb-agent"));
        // The new agent converges: an edit made now takes effect (pod2 joins). pod1 stays, so
        // the held connection keeps its backend.
        s.write("web.yaml", &web(&[POD1, POD2]));
        let vip = addr(CLUSTER_IP, 80);
        until_answer(
            &s.pods[0],
            vip,
            false,
            Some("pod2"),
            Duration::from_secs(10),
        );
        let after = poll_until(Duration::from_secs(5), || {
            (ok.load(Ordering::Relaxed) >= at_kill + 20).then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        assert!(
            after.is_some(),
            "connections kept succeeding after the restart"
        );
    });
    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    eprintln!("{ok} new connections through the restart, {failed} failed");
    assert_eq!(
        failed, 0,
        "no new connection failed across kill -9 and restart"
    );
    let reply = held
        .ask(Duration::from_secs(2))
        .expect("the held connection still works");
    assert_eq!(reply.name, "pod1", "the held connection kept its backend");

    // SIGTERM leaves everything in place; `lb-agent cleanup` removes it.
    let mut second = second.expect("second agent");
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(second.pid() as i32, libc::SIGTERM) };
    let exited = poll_until(Duration::from_secs(5), || second.try_wait().ok().flatten());
    assert!(
        exited.is_some_and(|st| st.success()),
        "agent exits cleanly on SIGTERM: {exited:?}\n{}",
        second.stderr()
    );
    until_answer(
        &s.client,
        nodeport,
        false,
        Some("pod2"),
        Duration::from_secs(1),
    );
    let pin = s.lab.pin_path("node");
    let bin = agent_bin().expect("lb-agent");
    let out = s
        .node
        .exec(bin, ["cleanup", "--pin-path", pin.to_str().unwrap()])
        .expect("lb-agent cleanup");
    assert!(out.status.success(), "cleanup: {out:?}");
    assert!(!pin.exists(), "pins removed");
    // Links are released asynchronously once their last pin goes: poll.
    until_answer(&s.client, nodeport, false, None, Duration::from_secs(1));
    until_answer(
        &s.pods[0],
        addr(CLUSTER_IP, 80),
        false,
        None,
        Duration::from_secs(1),
    );
}

#[test]
fn agent_attaches_pod_links_created_later_and_lets_go_of_vanished_ones() {
    if !require_privileged("lab_agent") {
        return;
    }
    let (s, agent) = started("lab-agent-links");
    let vip = addr(CLUSTER_IP, 80);

    // A pod created after the agent started: its host-side link matches `h*` and is attached.
    let pod3 = pod(&s.lab, &s.node, "pod3", "10.244.1.9", "h3").expect("pod3");
    until_answer(&pod3, vip, false, Some("pod1"), Duration::from_secs(2));

    // The pod goes away (its veth with it): the agent lets go, logs it once, and keeps working.
    s.node.ip("link del h3").expect("delete h3");
    let detached = poll_until(Duration::from_secs(2), || {
        agent.stderr().contains("detached").then_some(())
    });
    assert!(
        detached.is_some(),
        "agent noticed h3 vanish:\n{}",
        agent.stderr()
    );
    s.write("web.yaml", &web(&[POD2]));
    until_answer(&s.pods[0], vip, false, Some("pod2"), Duration::from_secs(1));
    assert!(
        !agent.stderr().contains("ERROR"),
        "no errors:\n{}",
        agent.stderr()
    );
}

#[test]
fn a_terminating_pod_keeps_its_connections_and_takes_no_new_ones() {
    if !require_privileged("lab_agent") {
        return;
    }
    let s = setup("lab-agent-term");
    s.write("web.yaml", &web(&[POD1]));
    let _agent = s.start_agent("agent").expect("lb-agent");
    let nodeport = addr(NODE_IP, 30080);
    let mut held = connection_to_pod1(&s, nodeport);

    // A rolling update: pod2 is ready, pod1 is terminating (still serving).
    let endpoints = format!(
        "- {{addresses: [{POD1}], nodeName: {NODE}, \
         conditions: {{ready: false, serving: true, terminating: true}}}}\n\
         - {{addresses: [{POD2}], nodeName: {NODE}}}\n"
    );
    s.write("web.yaml", &web_with(&endpoints));
    let moved = poll_until(Duration::from_secs(2), || {
        (0..8)
            .all(|_| answer(&s.client, nodeport, false).as_deref() == Some("pod2"))
            .then_some(())
    });
    assert!(moved.is_some(), "new connections go to the ready pod only");
    let reply = held.ask(Duration::from_secs(2));
    assert_eq!(
        reply.map(|r| r.name).ok().as_deref(),
        Some("pod1"),
        "the established connection stays on the terminating pod"
    );

    // The pod gone from the slice: its connections may go (kube-proxy's would time out).
    s.write("web.yaml", &web(&[POD2]));
    until_answer(
        &s.client,
        nodeport,
        false,
        Some("pod2"),
        Duration::from_secs(1),
    );
}

/// A link that changes role across a restart (a pod link that becomes external) keeps none of
/// its old hooks: the new agent reads what the old one recorded and detaches it first.
#[test]
fn a_link_that_changes_role_across_a_restart_loses_its_old_hooks() {
    if !require_privileged("lab_agent") {
        return;
    }
    let (s, mut agent) = started("lab-agent-role");
    let h1 = s.node.ifindex("h1").expect("h1");
    let links = s.lab.pin_path("node").join("links");
    // h1's pins: `<ifindex>-<hook>`, with `-nl` for a netlink TC filter (Linux before 6.6).
    let pins_of_h1 = || -> Vec<String> {
        std::fs::read_dir(&links)
            .expect("links dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("{h1}-")))
            .collect()
    };
    let pod_hook = format!("{h1}-tc-pod");
    let before = pins_of_h1();
    assert!(
        before.iter().any(|n| n.starts_with(&pod_hook)),
        "h1 starts as a pod link: {before:?}"
    );
    agent.signal(libc::SIGKILL).expect("kill");
    let _ = agent.wait_timeout(Duration::from_secs(5));

    let flags = [
        "--ext-iface",
        "eth1",
        "--ext-iface",
        "h1",
        "--pod-iface",
        "h2",
        "--xdp-mode",
        "generic",
    ];
    let _agent = s.start_agent_with("agent-2", &flags).expect("lb-agent");
    let roles = poll_until(scaled(Duration::from_secs(10)), || {
        let rows = s.lbctl_json(&["interfaces"]).ok()?;
        let role = |name: &str| {
            rows.as_array()?
                .iter()
                .find(|r| r["name"] == name)
                .map(|r| r["role"].clone())
        };
        (role("h1")? == "external").then_some(())
    });
    assert!(roles.is_some(), "h1 became external");
    let left = pins_of_h1();
    assert!(
        !left.iter().any(|n| n.starts_with(&pod_hook)),
        "the pod hook of h1 stayed: {left:?}"
    );
    assert!(
        left.iter().any(|n| n.starts_with(&format!("{h1}-xdp"))),
        "h1 has its XDP program: {left:?}"
    );
}

/// Two agents on one pin path would undo each other's writes unnoticed: the second stops at
/// start with an error naming the first, which keeps serving; `lb-agent cleanup` refuses too
/// while an agent holds the path.
#[test]
fn a_second_agent_on_the_same_pin_path_stops_naming_the_first() {
    if !require_privileged("lab_agent") {
        return;
    }
    let (s, agent) = started("lab-agent-lock");
    let mut second = s.start_agent("second").expect("lb-agent");
    let status = second
        .wait_timeout(scaled(Duration::from_secs(20)))
        .expect("waiting for the second lb-agent")
        .expect("the second lb-agent exits");
    assert!(!status.success(), "{status}");
    let err = second.stderr();
    let first = format!("is in use by pid {} (", agent.pid());
    assert!(err.contains(&first), "wanted {first:?} in:\n{err}");

    let pin = s.lab.pin_path("node");
    let pin_arg = pin.to_str().expect("pin path");
    let cleanup = s
        .node
        .exec_unchecked(
            agent_bin().expect("lb-agent"),
            ["cleanup", "--pin-path", pin_arg],
        )
        .expect("lb-agent cleanup");
    assert!(!cleanup.status.success(), "cleanup ran under a live agent");
    let err = String::from_utf8_lossy(&cleanup.stderr);
    assert!(err.contains("is in use by"), "{err}");
    assert!(pin.exists(), "cleanup removed the live agent's pins");

    // The first agent still runs the node: an edit still takes effect.
    s.write("web.yaml", &web(&[POD2]));
    let vip = addr(CLUSTER_IP, 80);
    until_answer(
        &s.pods[0],
        vip,
        false,
        Some("pod2"),
        Duration::from_secs(10),
    );
}
