//! Privileged smoke test of the namespace lab: two namespaces joined by a veth, echo traffic over
//! TCP and UDP, refusals and timeouts, and that everything is gone after the lab is dropped.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lb_tests::lab::{self, echo, Lab, RequestError, REGISTRY_DIR};

const ECHO: &str = env!("CARGO_BIN_EXE_lb-echo");
const T: Duration = Duration::from_secs(2);

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Our namespaces in `ip netns list` (names start with the prefix and a dash).
fn listed(prefix: &str) -> Vec<String> {
    netns_list()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

/// Interfaces and IPv4 addresses of the root namespace, to check the lab leaves it alone.
fn root_net_state() -> String {
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let addrs = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    let names: BTreeSet<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect();
    format!("{names:?}\n{}", String::from_utf8_lossy(&addrs.stdout))
}

fn is_gone_or_zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    matches!(state, None | Some("Z"))
}

#[test]
fn veth_pair_carries_tcp_and_udp_and_cleans_up() -> Result<()> {
    if !lab::require_privileged("lab_smoke::veth_pair_carries_tcp_and_udp_and_cleans_up") {
        return Ok(());
    }
    let root_before = root_net_state();
    let lab = Lab::new("lab_smoke")?;
    lab.set_echo_bin(ECHO);
    // The fallback lookup finds the same binary Cargo built for this test.
    assert_eq!(
        lab::echo_bin()?.canonicalize()?,
        Path::new(ECHO).canonicalize()?
    );
    let prefix = lab.prefix().to_string();
    assert!(Path::new(REGISTRY_DIR).join(&prefix).exists());

    let client = lab.netns("client")?;
    let server = lab.netns("server")?;
    assert_eq!(client.name(), format!("{prefix}-client"));
    lab.veth(&client, "eth0", &server, "eth0")?;
    client.add_addr("eth0", "198.51.100.2/24")?;
    server.add_addr("eth0", "198.51.100.3/24")?;
    client.tx_offload_off("eth0")?;
    server.tx_offload_off("eth0")?;
    assert_eq!(listed(&prefix).len(), 2, "{}", netns_list());

    // Commands see the namespace's own interfaces (also in /sys) and the real bpffs.
    let links: BTreeSet<String> = client
        .sh("ls /sys/class/net")?
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        links,
        BTreeSet::from(["eth0".to_string(), "lo".to_string()])
    );
    assert_eq!(client.run("stat -f -c %T /sys/fs/bpf")?.trim(), "bpf_fs");
    // ... the same bpffs as the root namespace: a pin dir made inside is visible outside.
    let pin = lab.pin_path("smoke");
    let cgroup = lab.cgroup().map(Path::to_path_buf);
    assert!(cgroup.as_ref().is_none_or(|c| c.is_dir()), "no lab cgroup");
    assert!(pin.starts_with("/sys/fs/bpf") && !pin.exists());
    client.exec("mkdir", [&pin])?;
    assert!(pin.is_dir());
    let idx = client.ifindex("eth0")?;
    assert_eq!(
        client.run("cat /sys/class/net/eth0/ifindex")?.trim(),
        idx.to_string()
    );
    assert_ne!(client.mac("eth0")?, server.mac("eth0")?);
    let err = client
        .exec("ip", ["link", "set", "nosuchif", "up"])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("nosuchif") && msg.contains("stderr"), "{msg}");

    // in_netns runs on another thread: the caller's namespace does not change.
    let own = std::fs::read_link("/proc/thread-self/ns/net")?;
    let inside = client.in_netns(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())?;
    assert_ne!(own, inside);
    assert_eq!(std::fs::read_link("/proc/thread-self/ns/net")?, own);

    let tcp = server.serve_echo("pod-a", 8080, false)?;
    let udp = server.serve_echo("pod-a-udp", 8080, true)?;
    let srv: SocketAddr = "198.51.100.3:8080".parse()?;
    let r = client.request(srv, false, T)?;
    assert_eq!(r.name, "pod-a");
    assert_eq!(r.peer.ip().to_string(), "198.51.100.2");
    let r = client.request(srv, true, T)?;
    assert_eq!(r.name, "pod-a-udp");
    assert_eq!(r.peer.ip().to_string(), "198.51.100.2");

    // One connection, several requests, same 5-tuple.
    let mut conn = client.echo_conn(srv, false, T)?;
    let a = conn.ask(T)?;
    assert_eq!(a.peer, conn.local_addr());
    assert_eq!(conn.ask(T)?, a);

    // The binary's client, as a shell user would run it.
    let out = client.exec(ECHO, ["request", "--addr", "198.51.100.3:8080", "--udp"])?;
    let line = String::from_utf8(out.stdout)?;
    assert!(line.starts_with("pod-a-udp 198.51.100.2:"), "{line}");

    // Closed port: refused, at once, for both protocols and through the binary.
    let closed: SocketAddr = "198.51.100.3:8081".parse()?;
    for is_udp in [false, true, false, true] {
        let start = Instant::now();
        assert_eq!(
            client.request(closed, is_udp, T),
            Err(RequestError::Refused),
            "udp={is_udp}"
        );
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(100),
            "udp={is_udp} refused after {took:?}"
        );
    }
    for args in [vec![], vec!["--udp"]] {
        let out = client.exec_unchecked(
            ECHO,
            [&["request", "--addr", "198.51.100.3:8081"][..], &args].concat(),
        )?;
        assert_eq!(out.status.code(), Some(echo::EXIT_REFUSED), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refused"),
            "{out:?}"
        );
    }

    // A socket that never answers: timeout, distinct from refused.
    let mute = server.in_netns(|| UdpSocket::bind("0.0.0.0:9000"))??;
    let silent: SocketAddr = "198.51.100.3:9000".parse()?;
    assert_eq!(
        client.request(silent, true, Duration::from_millis(200)),
        Err(RequestError::Timeout)
    );
    let out = client.exec_unchecked(
        ECHO,
        [
            "request",
            "--udp",
            "--addr",
            "198.51.100.3:9000",
            "--timeout-ms",
            "200",
        ],
    )?;
    assert_eq!(out.status.code(), Some(echo::EXIT_TIMEOUT), "{out:?}");
    drop(mute);

    // A process started outside the guards is still killed by the lab (it's in its namespace).
    let mut stray = client.command("sleep").arg("1000").spawn()?;
    let pids = [tcp.pid(), udp.pid(), stray.id()];

    // Dropping the lab while the guards are still alive kills their processes too.
    drop(lab);
    assert!(listed(&prefix).is_empty(), "left behind: {}", netns_list());
    assert!(!Path::new(REGISTRY_DIR).join(&prefix).exists());
    assert!(!std::env::temp_dir()
        .join(format!("lb-lab-{prefix}"))
        .exists());
    assert!(!pin.exists(), "pin dir left behind");
    assert!(
        cgroup.as_ref().is_none_or(|c| !c.exists()),
        "cgroup left behind"
    );
    let status = stray.wait()?;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    for pid in pids {
        lab::wait_until(T, &format!("pid {pid} to die"), || {
            is_gone_or_zombie(pid).then_some(())
        });
    }
    drop((tcp, udp));
    // Operations on a dropped lab's namespaces fail cleanly.
    assert!(client.exec("true", [""; 0]).is_err());
    assert_eq!(root_net_state(), root_before, "the root namespace changed");
    Ok(())
}

#[test]
fn bridge_joins_namespaces() -> Result<()> {
    if !lab::require_privileged("lab_smoke::bridge_joins_namespaces") {
        return Ok(());
    }
    let lab = Lab::new("lab_smoke_bridge")?;
    lab.set_echo_bin(ECHO);
    let node = lab.netns("node")?;
    let pods = [lab.netns("pod1")?, lab.netns("pod2")?];
    for (i, pod) in pods.iter().enumerate() {
        let host_if = format!("veth{i}");
        lab.veth(pod, "eth0", &node, &host_if)?;
        pod.add_addr("eth0", &format!("10.244.1.{}/24", i + 2))?;
        pod.add_route("default", "10.244.1.1")?;
    }
    lab.bridge(&node, "cni0", &["veth0", "veth1"])?;
    node.add_addr("cni0", "10.244.1.1/24")?;
    let master = node.ip("-o link show veth1")?;
    assert!(master.contains("master cni0"), "{master}");

    let _srv = pods[1].serve_echo("pod2", 80, false)?;
    let r = pods[0].request("10.244.1.3:80".parse()?, false, T)?;
    assert_eq!(
        (r.name.as_str(), r.peer.ip().to_string()),
        ("pod2", "10.244.1.2".to_string())
    );
    // Through the node's address on the bridge as well (routing into the node namespace).
    let _nsrv = node.serve_echo("node", 10250, true)?;
    let r = pods[0].request("10.244.1.1:10250".parse()?, true, T)?;
    assert_eq!(r.name, "node");
    node.wait_listening(10250, true, T)?;
    Ok(())
}

#[test]
fn cleanup_also_happens_on_panic() {
    if !lab::require_privileged("lab_smoke::cleanup_also_happens_on_panic") {
        return;
    }
    let seen = Arc::new(Mutex::new((String::new(), 0u32)));
    let seen2 = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::new("lab_smoke_panic").unwrap();
        let ns = lab.netns("doomed").unwrap();
        let child = ns.spawn("sleeper", "sleep", ["1000"]).unwrap();
        *seen2.lock().unwrap() = (lab.prefix().to_string(), child.pid());
        panic!("deliberate panic to test cleanup");
    });
    assert!(result.is_err());
    let (prefix, pid) = seen.lock().unwrap().clone();
    assert!(!prefix.is_empty());
    assert!(listed(&prefix).is_empty(), "left behind: {}", netns_list());
    assert!(is_gone_or_zombie(pid));
}

#[test]
fn keep_leaves_namespaces_for_inspection() -> Result<()> {
    if !lab::require_privileged("lab_smoke::keep_leaves_namespaces_for_inspection") {
        return Ok(());
    }
    let lab = Lab::new("lab_smoke_keep")?;
    let prefix = lab.prefix().to_string();
    let ns = lab.netns("kept")?;
    let name = ns.name().to_string();
    let cgroup = lab.cgroup().map(Path::to_path_buf);
    lab.keep();
    drop(lab);
    let kept = listed(&prefix);
    let cgroup_kept = cgroup.as_ref().is_none_or(|c| c.is_dir());
    // Remove it ourselves before asserting, so a failure leaves nothing behind either.
    let del = Command::new("ip")
        .args(["netns", "del", &name])
        .output()
        .context("ip netns del")?;
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("lb-lab-{prefix}")));
    if let Some(c) = &cgroup {
        let _ = std::fs::remove_dir(c);
    }
    assert_eq!(kept, vec![name.clone()]);
    assert!(cgroup_kept, "the lab's cgroup is kept too");
    assert!(del.status.success(), "{del:?}");
    assert!(
        !Path::new(REGISTRY_DIR).join(&prefix).exists(),
        "kept labs are not reaped later"
    );
    assert!(listed(&prefix).is_empty());
    Ok(())
}
