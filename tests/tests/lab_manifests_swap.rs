//! lb-agent in manifests mode while its directory is swapped by rename (`mv conf conf.old;
//! mv conf.new conf`, as deploy tools publish a new version) and while it cannot be listed (a
//! symlink loop in its place): the agent keeps the last good objects, so a stream of new
//! connections to the ClusterIPs fails none and an established connection keeps its backend.
//! A swap to a directory with one service changed still takes effect within 1 s.
use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    sync::Mutex,
    time::{Duration, Instant},
};

use lb::source::manifests::POLL_INTERVAL;
use lb_tests::{
    agent_lab::{addr, local_endpoints, until_answer, web_manifest, write_manifest, AgentLab},
    agent_lab::{CLUSTER_IP, NODE},
    lab::{require_privileged, wait_until, ChildGuard, EchoConn, Netns, StopOnDrop},
};

const POD1: &str = "10.244.1.5";
const POD2: &str = "10.244.1.7";
const API_IP: &str = "10.96.0.20";
/// How many times the directory is swapped for one holding the same services.
const SWAPS: usize = 5;
/// What the agent logs (warning, naming the root) when a root cannot be listed, and (info) once
/// every root can be listed again.
const UNLISTED: &str = "keeping its last good objects until it can be listed again";
const LISTED_AGAIN: &str = "every manifest root can be listed again";

/// The manifest files: `shop/web` (ClusterIP, NodePort) to `web_backend`, `shop/api` to pod2.
fn files(web_backend: &str) -> Vec<(&'static str, String)> {
    let api = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: api, namespace: shop}}
spec: {{clusterIP: {API_IP}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: api-1, namespace: shop, labels: {{kubernetes.io/service-name: api}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints: [{{addresses: [{POD2}], nodeName: {NODE}}}]
"
    );
    let web = web_manifest("", &local_endpoints(&[web_backend]));
    vec![("web.yaml", web), ("api.yaml", api)]
}

/// How many times the agent has logged `what`.
fn logged(agent: &ChildGuard, what: &str) -> usize {
    agent.stderr().matches(what).count()
}

/// Take `conf` away with `take_away` and wait until the agent has seen it gone (so every
/// round really runs the agent through the missing root), then put it back with `restore`.
/// Returns when `conf` is back (the agent has not necessarily looked yet).
fn without_root(agent: &ChildGuard, take_away: impl FnOnce(), restore: impl FnOnce()) {
    let seen = logged(agent, UNLISTED);
    take_away();
    wait_until(Duration::from_secs(2), "the agent to miss the root", || {
        (logged(agent, UNLISTED) > seen).then_some(())
    });
    restore();
}

/// `mv conf conf.old; mv conf.new conf` with `conf.new` holding `files`; `conf.old` removed.
/// Both sit beside `conf` in the lab's log directory, which goes with the lab.
fn swap(s: &AgentLab, agent: &ChildGuard, files: &[(&str, String)]) {
    let conf = &s.manifests;
    let (old, new) = (conf.with_extension("old"), conf.with_extension("new"));
    std::fs::create_dir(&new).expect("mkdir conf.new");
    for (name, text) in files {
        write_manifest(&new, name, text);
    }
    without_root(
        agent,
        || std::fs::rename(conf, &old).expect("mv conf conf.old"),
        || std::fs::rename(&new, conf).expect("mv conf.new conf"),
    );
    std::fs::remove_dir_all(&old).expect("rm -r conf.old");
}

/// `conf` made unlistable for a few polls (a symlink to itself: ELOOP), then put back.
fn unlistable_for_a_while(s: &AgentLab, agent: &ChildGuard) {
    let conf = &s.manifests;
    let hold = conf.with_extension("hold");
    without_root(
        agent,
        || {
            std::fs::rename(conf, &hold).expect("mv conf conf.hold");
            std::os::unix::fs::symlink(conf, conf).expect("ln -s conf conf");
        },
        || {
            // Held a few more polls: it stays unlistable, not only for one look.
            std::thread::sleep(3 * POLL_INTERVAL);
            std::fs::remove_file(conf).expect("rm conf");
            std::fs::rename(&hold, conf).expect("mv conf.hold conf");
        },
    );
}

/// Wait until the agent has listed `conf` again since it logged that `before` times.
fn until_listed_again(agent: &ChildGuard, before: usize) {
    wait_until(
        Duration::from_secs(2),
        "the agent to list the root again",
        || (logged(agent, LISTED_AGAIN) > before).then_some(()),
    );
}

/// Every frontend `lbctl -o json services` lists, with its service and backends, sorted.
fn frontends(s: &AgentLab) -> Vec<String> {
    let json = s.lbctl_json(&["services"]).expect("lbctl services");
    let mut out: Vec<String> = json
        .as_array()
        .expect("an array of frontends")
        .iter()
        .map(|e| format!("{} {} {}", e["service"], e["frontend"], e["backends"]))
        .collect();
    out.sort();
    out
}

/// New TCP connections, one after another, from pod namespaces to ClusterIPs until stopped;
/// each must be answered by the expected pod.
struct ConnectionLoop<'a> {
    targets: Vec<(&'a Netns, std::net::SocketAddr, &'a str)>,
    stop: AtomicBool,
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl<'a> ConnectionLoop<'a> {
    fn new(targets: Vec<(&'a Netns, std::net::SocketAddr, &'a str)>) -> Self {
        ConnectionLoop {
            targets,
            stop: AtomicBool::new(false),
            ok: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
        }
    }

    fn run(&self) {
        for (from, to, want) in self.targets.iter().cycle() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            match from.request(*to, false, Duration::from_secs(2)) {
                Ok(r) if r.name == *want => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                got => self.failures.lock().unwrap().push(format!("{to}: {got:?}")),
            }
        }
    }
}

#[test]
fn a_swapped_or_unlistable_manifest_directory_loses_no_connection() {
    if !require_privileged("lab_manifests_swap") {
        return;
    }
    let pods = [("pod1", POD1, "h1"), ("pod2", POD2, "h2")];
    let s = AgentLab::new("lab-manifests-swap", env!("CARGO_BIN_EXE_lb-echo"), &pods).expect("lab");
    for (name, text) in files(POD1) {
        s.write(name, &text);
    }
    let agent = s.start_agent("agent").expect("lb-agent");
    let (web, api) = (addr(CLUSTER_IP, 80), addr(API_IP, 80));
    let start = Duration::from_secs(10);
    until_answer(&s.pods[1], web, false, Some("pod1"), start);
    until_answer(&s.pods[0], api, false, Some("pod2"), start);
    let programmed = frontends(&s);
    let mut held = s.pods[1]
        .echo_conn(web, false, Duration::from_secs(2))
        .expect("a connection to web");
    let ask = |held: &mut EchoConn| held.ask(Duration::from_secs(2)).map(|r| r.name);
    assert_eq!(ask(&mut held).expect("held"), "pod1");

    let conns = ConnectionLoop::new(vec![(&s.pods[1], web, "pod1"), (&s.pods[0], api, "pod2")]);
    std::thread::scope(|scope| {
        scope.spawn(|| conns.run());
        let _stop = StopOnDrop(&conns.stop);
        for round in 0..=SWAPS {
            let listed = logged(&agent, LISTED_AGAIN);
            if round < SWAPS {
                swap(&s, &agent, &files(POD1));
            } else {
                unlistable_for_a_while(&s, &agent);
            }
            until_listed_again(&agent, listed);
            assert_eq!(
                ask(&mut held).ok().as_deref(),
                Some("pod1"),
                "round {round}"
            );
        }
        // The loop goes on while the agent reads the last directory's files: they have new
        // inodes, so it reads them a poll or two after it lists them.
        std::thread::sleep(3 * POLL_INTERVAL);
    });
    let (ok, failures) = (conns.ok.into_inner(), conns.failures.into_inner().unwrap());
    eprintln!("{ok} new connections through {SWAPS} swaps and an unlistable root");
    assert_eq!(failures, Vec::<String>::new(), "no connection failed");
    assert!(ok >= 20, "the connection loop ran: {ok}");
    assert_eq!(
        ask(&mut held).ok().as_deref(),
        Some("pod1"),
        "the held one works"
    );
    assert_eq!(
        frontends(&s),
        programmed,
        "every frontend is still programmed"
    );
    let conf = s.manifests.display().to_string();
    let warned = agent
        .stderr()
        .lines()
        .any(|l| l.contains(UNLISTED) && l.contains(&conf));
    assert!(warned, "the warning names the root:\n{}", agent.stderr());

    // A swap to a directory where web moved to pod2 takes effect within the 1 s contract.
    swap(&s, &agent, &files(POD2));
    let placed = Instant::now();
    until_answer(&s.pods[0], web, false, Some("pod2"), Duration::from_secs(1));
    eprintln!("swap → traffic moved in {:?}", placed.elapsed());
}
