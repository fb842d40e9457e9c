//! A node running the real `lb-agent` in manifests mode, as the agent lab tests drive it: routed
//! pods with echo servers, an outside client on `eth1`, a manifest directory that is edited the
//! way editors and kubectl do it, and polling helpers for "who answers".
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    lab::{poll_until, ChildGuard, Lab, Netns},
    topology::{agent_bin, client, lbctl_bin, pod},
};

/// The interfaces of [`AgentLab::start_agent`]: `eth1` external, `h*` pod links.
const LAB_FLAGS: [&str; 4] = ["--ext-iface", "eth1", "--pod-iface", "h*"];

/// The node's name: endpoints with this nodeName are local.
pub const NODE: &str = "node-a";
/// The node's address on `eth1`, facing the client (192.0.2.100).
pub const NODE_IP: &str = "192.0.2.1";

pub struct AgentLab {
    pub lab: Lab,
    pub node: Netns,
    pub client: Netns,
    /// In the order given to [`AgentLab::new`]; each serves TCP and UDP echo on 8080.
    pub pods: Vec<Netns>,
    pub manifests: PathBuf,
    _servers: Vec<ChildGuard>,
}

impl AgentLab {
    /// `pods`: (name, address, host-side interface matching `h*`).
    pub fn new(test: &str, echo_bin: &str, pods: &[(&str, &str, &str)]) -> Result<Self> {
        let lab = Lab::new(test)?;
        lab.set_echo_bin(echo_bin);
        let node = lab.netns("node")?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        let mut netns = Vec::new();
        let mut servers = Vec::new();
        for (name, ip, host_if) in pods {
            let ns = pod(&lab, &node, name, ip, host_if)?;
            for udp in [false, true] {
                servers.push(ns.serve_echo(name, 8080, udp)?);
            }
            netns.push(ns);
        }
        let client = client(
            &lab,
            &node,
            "eth1",
            &format!("{NODE_IP}/24"),
            "192.0.2.100/24",
        )?;
        let manifests = lab.log_dir().join("manifests");
        std::fs::create_dir_all(&manifests).context("manifests dir")?;
        Ok(AgentLab {
            lab,
            node,
            client,
            pods: netns,
            manifests,
            _servers: servers,
        })
    }

    /// `lb-agent run` on the node: manifests mode, `eth1` external, `h*` pod links.
    pub fn start_agent(&self, label: &str) -> Result<ChildGuard> {
        self.start_agent_with(label, &LAB_FLAGS)
    }

    /// `lb-agent run` on the node in manifests mode with these interface `flags`.
    pub fn start_agent_with(&self, label: &str, flags: &[&str]) -> Result<ChildGuard> {
        self.node
            .spawn(label, agent_bin()?, self.agent_args(flags)?)
    }

    /// [`AgentLab::start_agent`] started through `wrapper` (a program and its arguments, the
    /// agent's command line appended), e.g. `setpriv` with fewer capabilities.
    pub fn start_agent_in(&self, label: &str, wrapper: &[String]) -> Result<ChildGuard> {
        let (program, wrapper_args) = wrapper.split_first().context("empty wrapper")?;
        let mut args: Vec<std::ffi::OsString> = wrapper_args.iter().map(Into::into).collect();
        args.push(agent_bin()?.into());
        args.extend(self.agent_args(&LAB_FLAGS)?.into_iter().map(Into::into));
        self.node.spawn(label, program, args)
    }

    fn agent_args(&self, flags: &[&str]) -> Result<Vec<String>> {
        let pin = self.lab.pin_path("node");
        let mut args = vec![
            "run",
            "--node-name",
            NODE,
            "--manifests",
            self.manifests.to_str().context("manifest path")?,
            "--pin-path",
            pin.to_str().context("pin path")?,
        ];
        args.extend_from_slice(flags);
        Ok(args.iter().map(|a| a.to_string()).collect())
    }

    /// Replace a manifest the way editors and kubectl do: write aside, rename over.
    pub fn write(&self, name: &str, text: &str) {
        write_manifest(&self.manifests, name, text);
    }

    /// `lbctl -o json ARGS` on the node's pins, parsed: what the maps hold now (read only; for
    /// waiting until the agent has applied an edit).
    pub fn lbctl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        lbctl_json(&self.node, &self.lab.pin_path("node"), args)
    }
}

/// Replace manifest `name` in `dir` the way editors and kubectl do: write aside, rename over.
pub fn write_manifest(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, dir.join(name)).expect("rename manifest");
}

/// `lbctl --pin-path PIN -o json ARGS` in `node`, parsed.
pub fn lbctl_json(node: &Netns, pin: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = vec![
        "--pin-path",
        pin.to_str().context("pin path")?,
        "-o",
        "json",
    ];
    all.extend_from_slice(args);
    let out = node.exec(lbctl_bin()?, all)?;
    serde_json::from_slice(&out.stdout).context("lbctl output is not JSON")
}

/// `ip:port` as a socket address.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// Which pod answers `to` from `from` (None: no answer within 1 s: generous, so a loaded
/// machine does not turn a slow answer into a missing one).
pub fn answer(from: &Netns, to: SocketAddr, udp: bool) -> Option<String> {
    from.request(to, udp, Duration::from_secs(1))
        .ok()
        .map(|r| r.name)
}

/// Poll until `from` → `to` is answered by `want` (or not answered, for None); panics with the
/// last answer after `within`. Returns how long it took.
pub fn until_answer(
    from: &Netns,
    to: SocketAddr,
    udp: bool,
    want: Option<&str>,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    let got = poll_until(within, || {
        (answer(from, to, udp).as_deref() == want).then_some(())
    });
    assert!(
        got.is_some(),
        "{to} (udp={udp}) from {}: wanted {want:?} within {within:?}, last {:?}",
        from.name(),
        answer(from, to, udp)
    );
    start.elapsed()
}

/// The ClusterIP of [`web_manifest`]'s service.
pub const CLUSTER_IP: &str = "10.96.0.10";

/// Service `shop/web`: TCP 80 (NodePort 30080) and UDP 53 on [`CLUSTER_IP`], to port 8080 of the
/// `endpoints:` list given as YAML lines; `spec_extra` adds lines to its spec (indented by two).
pub fn web_manifest(spec_extra: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  type: NodePort
  clusterIP: {CLUSTER_IP}
  {spec_extra}
  ports:
  - {{name: http, port: 80, targetPort: 8080, nodePort: 30080}}
  - {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080}}
- {{name: dns, port: 8080, protocol: UDP}}
endpoints:
{endpoints}"
    )
}

/// `endpoints:` lines for ready pods at `ips` on this node.
pub fn local_endpoints(ips: &[&str]) -> String {
    ips.iter()
        .map(|ip| format!("- {{addresses: [{ip}], nodeName: {NODE}}}\n"))
        .collect()
}
