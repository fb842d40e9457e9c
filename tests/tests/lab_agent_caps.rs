//! lb-agent with only the capabilities the DaemonSet grants (`RUN_CAPABILITIES`, which
//! lb-userspace/tests/deploy.rs holds the manifest to), started the way a container runtime
//! starts it: uid 0, every other capability out of the bounding set, no_new_privs. It loads,
//! attaches and serves; a restart adopts its pins; without any one of the three it fails; and
//! `lb-agent cleanup` with `CLEANUP_CAPABILITIES` removes everything.
use std::time::Duration;

use lb::agent::cli::{CLEANUP_CAPABILITIES, RUN_CAPABILITIES};
use lb_tests::{
    agent_lab::{addr, local_endpoints, until_answer, web_manifest, AgentLab, CLUSTER_IP, NODE_IP},
    lab::{poll_until, require_privileged},
    topology::agent_bin,
};

const POD1: &str = "10.244.1.5";
const POD2: &str = "10.244.1.7";

/// `setpriv` keeping uid 0 with only `caps`: for root, execve grants exactly the bounding set.
fn with_only<'a>(caps: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let keep: Vec<String> = caps
        .into_iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set=-all,{}", keep.join(",")),
        "--no-new-privs".into(),
    ]
}

#[test]
fn agent_runs_restarts_and_cleans_up_with_only_the_daemonsets_capabilities() {
    if !require_privileged("lab_agent_caps") {
        return;
    }
    let pods = [("pod1", POD1, "h1"), ("pod2", POD2, "h2")];
    let s = AgentLab::new("lab-agent-caps", env!("CARGO_BIN_EXE_lb-echo"), &pods).expect("lab");
    s.write("web.yaml", &web_manifest("", &local_endpoints(&[POD1])));

    // Each capability is needed: without it the agent stops at loading.
    for missing in RUN_CAPABILITIES {
        let rest = RUN_CAPABILITIES.iter().copied().filter(|c| c != missing);
        let mut agent = s
            .start_agent_in(&format!("without-{missing}"), &with_only(rest))
            .expect("lb-agent");
        let status = agent
            .wait_timeout(Duration::from_secs(20))
            .expect("waiting for lb-agent")
            .unwrap_or_else(|| panic!("lb-agent runs without CAP_{missing}"));
        assert!(!status.success(), "without CAP_{missing}: {status}");
    }

    let vip = addr(CLUSTER_IP, 80);
    let nodeport = addr(NODE_IP, 30080);
    let agent = s
        .start_agent_in("first", &with_only(RUN_CAPABILITIES.iter().copied()))
        .expect("lb-agent");
    // Pod → ClusterIP (TC on the pod link) and outside → NodePort (XDP).
    until_answer(
        &s.pods[1],
        vip,
        false,
        Some("pod1"),
        Duration::from_secs(10),
    );
    until_answer(
        &s.client,
        nodeport,
        false,
        Some("pod1"),
        Duration::from_secs(10),
    );
    // The node's own connection, in the lab cgroup: the socket hooks attached with these
    // capabilities too.
    let from_node = || {
        let echo = env!("CARGO_BIN_EXE_lb-echo");
        let vip = vip.to_string();
        let args = ["request", "--addr", &vip, "--timeout-ms", "500"];
        let out = s.node.exec_in_cgroup(echo, args).expect("lb-echo");
        out.status.success()
    };
    assert!(
        poll_until(Duration::from_secs(10), || from_node().then_some(())).is_some(),
        "the node reaches no Service: {}",
        agent.stderr()
    );
    agent
        .stop(Duration::from_secs(5))
        .expect("stopping lb-agent");

    // The pinned programs kept serving meanwhile; the new agent adopts them and writes the maps.
    let agent = s
        .start_agent_in("restarted", &with_only(RUN_CAPABILITIES.iter().copied()))
        .expect("lb-agent");
    let adopted = poll_until(Duration::from_secs(10), || {
        let log = agent.stderr();
        log.contains("adopted_frontends=").then_some(log)
    })
    .expect("the restarted agent loads");
    assert!(!adopted.contains("adopted_frontends=0"), "{adopted}");
    s.write("web.yaml", &web_manifest("", &local_endpoints(&[POD2])));
    until_answer(
        &s.pods[0],
        vip,
        false,
        Some("pod2"),
        Duration::from_secs(10),
    );
    until_answer(
        &s.client,
        nodeport,
        false,
        Some("pod2"),
        Duration::from_secs(10),
    );
    agent
        .stop(Duration::from_secs(5))
        .expect("stopping lb-agent");

    let pin = s.lab.pin_path("node");
    let mut cleanup = with_only(CLEANUP_CAPABILITIES.iter().copied());
    cleanup.push(agent_bin().expect("lb-agent").display().to_string());
    cleanup.extend([
        "cleanup".into(),
        "--pin-path".into(),
        pin.display().to_string(),
    ]);
    s.node
        .exec(&cleanup[0], &cleanup[1..])
        .expect("lb-agent cleanup");
    assert!(!pin.exists(), "{} is left", pin.display());
    // The kernel releases an unpinned link from a workqueue: the detach follows shortly after.
    until_answer(&s.client, nodeport, false, None, Duration::from_secs(10));
    assert!(
        poll_until(Duration::from_secs(10), || (!from_node()).then_some(())).is_some(),
        "the socket hooks outlived lb-agent cleanup"
    );
}
