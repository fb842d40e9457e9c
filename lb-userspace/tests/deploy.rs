//! The deployment (deploy/kubernetes, deploy/image) checked against the agent it deploys: the
//! manifests are rendered with `kubectl kustomize` (`cargo xtask setup` installs kubectl),
//! parsed into the Kubernetes API types, and the DaemonSet's command line is parsed with
//! lb-agent's own clap definition, so the manifests, the image and the binary cannot drift.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use clap::{parser::ValueSource, CommandFactory, FromArgMatches, Parser};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{
            ConfigMap, Container, HTTPGetAction, Namespace, PodSpec, Probe, ServiceAccount,
        },
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb::agent::{
    cli::{Cli, Command as AgentCommand, CLEANUP_CAPABILITIES, RUN_CAPABILITIES},
    RunArgs,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lb-userspace lives in the workspace")
        .to_path_buf()
}

/// Every object `kubectl kustomize DIR` renders, by kind; any other kind fails.
struct Rendered {
    config_maps: Vec<ConfigMap>,
    namespace: Namespace,
    service_account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    daemonset: DaemonSet,
}

/// The base.
fn render() -> Rendered {
    render_dir("deploy/kubernetes")
}

fn render_dir(dir: &str) -> Rendered {
    let docs = rendered_docs(dir);
    let mut config_maps = Vec::new();
    let mut namespace = None;
    let mut service_account = None;
    let mut role = None;
    let mut binding = None;
    let mut daemonset = None;
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "ConfigMap" => config_maps.push(serde_json::from_value(doc).expect("ConfigMap")),
            "Namespace" => once(&mut namespace, doc),
            "ServiceAccount" => once(&mut service_account, doc),
            "ClusterRole" => once(&mut role, doc),
            "ClusterRoleBinding" => once(&mut binding, doc),
            "DaemonSet" => once(&mut daemonset, doc),
            other => panic!("unexpected {other} in {dir}"),
        }
    }
    Rendered {
        config_maps,
        namespace: namespace.expect("a Namespace"),
        service_account: service_account.expect("a ServiceAccount"),
        role: role.expect("a ClusterRole"),
        binding: binding.expect("a ClusterRoleBinding"),
        daemonset: daemonset.expect("a DaemonSet"),
    }
}

/// `kubectl kustomize DIR` (DIR relative to the repository), one JSON value per document.
fn rendered_docs(dir: &str) -> Vec<Value> {
    let dir = repo().join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("running kubectl (`cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    serde_saphyr::from_multiple(&text).expect("rendered YAML")
}

/// Parse `doc` into `slot`, which must still be empty: one object of each kind.
fn once<T: DeserializeOwned>(slot: &mut Option<T>, doc: Value) {
    let kind = doc["kind"].clone();
    assert!(slot.is_none(), "more than one {kind}");
    *slot = Some(serde_json::from_value(doc).unwrap_or_else(|e| panic!("{kind}: {e}")));
}

impl Rendered {
    fn pod(&self) -> &PodSpec {
        self.daemonset
            .spec
            .template
            .spec
            .as_ref()
            .expect("DaemonSet pod spec")
    }

    fn agent(&self) -> &Container {
        let containers = &self.pod().containers;
        assert_eq!(containers.len(), 1, "one container, the agent");
        &containers[0]
    }

    /// The agent's command line, as lb-agent's clap definition parses it.
    fn matches(&self) -> clap::ArgMatches {
        let c = self.agent();
        let argv: Vec<&String> = c.command.iter().chain(&c.args).flatten().collect();
        assert_eq!(
            argv.first().map(|s| s.as_str()),
            Some("lb-agent"),
            "the container runs lb-agent"
        );
        Cli::command()
            .try_get_matches_from(&argv)
            .unwrap_or_else(|e| panic!("lb-agent rejects the DaemonSet's {argv:?}:\n{e}"))
    }

    fn run_args(&self) -> RunArgs {
        let cli = Cli::from_arg_matches(&self.matches()).expect("parsed");
        match cli.command {
            AgentCommand::Run(args) => *args,
            other => panic!("the DaemonSet runs {other:?}, not `run`"),
        }
    }
}

#[test]
fn rbac_is_read_only_and_limited_to_what_the_agent_watches() {
    let r = render();
    let mut granted = BTreeSet::new();
    for rule in r.role.rules.iter().flatten() {
        assert!(
            rule.non_resource_urls.is_none() && rule.resource_names.is_none(),
            "{rule:?}"
        );
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "verb {verb} is not read-only"
            );
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted.insert((group.as_str(), resource.as_str()));
            }
        }
    }
    let watched = BTreeSet::from([
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ]);
    assert_eq!(granted, watched);
    assert!(r.role.aggregation_rule.is_none());

    // Bound to the agent's ServiceAccount, in the agent's namespace, and nothing else.
    let ns = r
        .namespace
        .metadata
        .name
        .as_deref()
        .expect("namespace name");
    let sa = r.service_account.metadata.name.as_deref();
    assert_eq!(r.service_account.metadata.namespace.as_deref(), Some(ns));
    assert_eq!(r.daemonset.metadata.namespace.as_deref(), Some(ns));
    assert_eq!(r.pod().service_account_name.as_deref(), sa);
    assert_eq!(r.binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&r.binding.role_ref.name),
        r.role.metadata.name.as_ref()
    );
    let subjects = r.binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(subjects[0].name.as_str()), sa);
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns));
    // Host networking, a hostPath and added capabilities need the privileged level.
    let labels = r.namespace.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
}

#[test]
fn daemonset_args_parse_with_the_agent_cli_and_set_nothing_per_node() {
    let r = render();
    let matches = r.matches();
    let (name, run) = matches.subcommand().expect("a subcommand");
    assert_eq!(name, "run");
    // The node's name comes from the environment, interfaces and NodePort addresses from the
    // agent's defaults: nothing in the command line may differ from node to node.
    for id in ["node_name", "ext_ifaces", "pod_ifaces", "nodeport_cidrs"] {
        assert_ne!(
            run.value_source(id),
            Some(ValueSource::CommandLine),
            "{id} is set on the DaemonSet's command line"
        );
    }
    // Kubernetes mode: no manifests.
    let args = r.run_args();
    assert!(args.manifests.is_empty() && args.kubeconfig.is_none());
}

#[test]
fn node_name_comes_from_spec_node_name_in_the_agents_env_variable() {
    let r = render();
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").expect("run");
    let env = run
        .get_arguments()
        .find(|a| a.get_id() == "node_name")
        .and_then(|a| a.get_env())
        .expect("--node-name reads an environment variable")
        .to_str()
        .expect("UTF-8");
    let var = r
        .agent()
        .env
        .iter()
        .flatten()
        .find(|e| e.name == env)
        .unwrap_or_else(|| panic!("the agent has no {env}"));
    let field = var
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn the_example_overlay_gives_the_agent_the_api_servers_address() {
    let base = render();
    // The base leaves it to the overlay: without one, the kubelet's KUBERNETES_SERVICE_* stay.
    assert!(base.config_maps.is_empty());
    let r = render_dir("deploy/examples/overlay");
    let [cm] = r.config_maps.as_slice() else {
        panic!("one ConfigMap: {:?}", r.config_maps)
    };
    let refs: Vec<_> = r
        .agent()
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| e.config_map_ref.as_ref())
        .collect();
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(Some(&refs[0].name), cm.metadata.name.as_ref());
    assert_eq!(cm.metadata.namespace, r.daemonset.metadata.namespace);
    let data = cm.data.clone().unwrap_or_default();
    for var in ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"] {
        assert!(data.contains_key(var), "{var}: {data:?}");
    }
    let image = r.agent().image.clone().unwrap_or_default();
    assert_ne!(
        Some(&image),
        base.agent().image.as_ref(),
        "the overlay sets the image"
    );
    // By digest: a tag pushed again cannot change what a restarting pod runs.
    let digest = image
        .split_once("@sha256:")
        .map(|(_, d)| d)
        .unwrap_or_default();
    let hex = digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit());
    assert!(
        hex,
        "the example overlay names the image by digest: {image}"
    );
}

#[test]
fn runs_on_every_node_with_host_networking_and_critical_priority() {
    let r = render();
    let pod = r.pod();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    // A toleration with no key and operator Exists tolerates every taint.
    assert!(
        pod.tolerations.iter().flatten().any(|t| t.key.is_none()
            && t.operator.as_deref() == Some("Exists")
            && t.effect.is_none()),
        "{:?}",
        pod.tolerations
    );
    assert!(pod
        .node_selector
        .iter()
        .flatten()
        .all(|(k, _)| k == "kubernetes.io/os"));
    // Never two agents on one node (they would write the same maps), one node at a time.
    let strategy = r
        .daemonset
        .spec
        .update_strategy
        .as_ref()
        .expect("update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn probes_ask_the_agents_metrics_address() {
    let r = render();
    // The address the agent serves /livez and /healthz on: the DaemonSet's --metrics-addr, else
    // the clap default.
    let metrics: SocketAddr = r.run_args().metrics_addr;
    let c = r.agent();
    let check = |probe: &Option<Probe>, what: &str, path: &str| {
        let get: &HTTPGetAction = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what}: an HTTP probe"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        assert_eq!(get.port, IntOrString::Int(metrics.port().into()), "{what}");
        // With host networking the kubelet reaches the agent's loopback listener.
        assert_eq!(
            get.host.as_deref(),
            Some(metrics.ip().to_string().as_str()),
            "{what}"
        );
    };
    check(&c.startup_probe, "startupProbe", "/livez");
    check(&c.liveness_probe, "livenessProbe", "/livez");
    check(&c.readiness_probe, "readinessProbe", "/healthz");
    assert_eq!(
        r.matches()
            .subcommand_matches("run")
            .and_then(|m| m.value_source("metrics_addr")),
        Some(ValueSource::DefaultValue),
        "the probes follow the default --metrics-addr ({metrics})"
    );
}

#[test]
fn only_lbs_bpffs_directory_is_mounted_and_pins_land_at_the_default_path() {
    let r = render();
    let pod = r.pod();
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        ["bpffs", "tracefs", "cgroup"],
        "only these from the host"
    );
    // lb's directory, not the whole bpffs: other programs' pins (Cilium's, Calico's) stay out
    // of the agent's reach.
    let host = volumes[0].host_path.as_ref().expect("a hostPath");
    assert_eq!(host.path, lb::dataplane::DEFAULT_PIN_PATH);
    assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
    let mounts = r.agent().volume_mounts.as_deref().unwrap_or_default();
    assert_eq!(mounts.len(), 3, "{mounts:?}");
    // tracefs: where aya finds tracepoints, read only (the transmit-drop counters).
    let tracefs = &mounts[1];
    assert_eq!(tracefs.name, "tracefs");
    assert_eq!(
        volumes[1].host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/kernel/tracing")
    );
    assert_eq!(tracefs.mount_path, "/sys/kernel/tracing");
    assert_eq!(tracefs.read_only, Some(true));
    // The host's cgroup hierarchy, read only: the socket hooks attach to its root, which
    // --cgroup-path names (the container's /sys/fs/cgroup is its own cgroup namespace).
    let cgroup = &mounts[2];
    assert_eq!(cgroup.name, "cgroup");
    assert_eq!(
        volumes[2].host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/fs/cgroup")
    );
    assert_eq!(cgroup.read_only, Some(true));
    assert_eq!(
        r.run_args().cgroup_path.as_deref(),
        Some(Path::new(&cgroup.mount_path))
    );
    let mount = &mounts[0];
    assert_eq!(mount.name, volumes[0].name);
    assert_ne!(mount.read_only, Some(true), "the agent pins maps and links");
    // The default AppArmor profile of container runtimes denies writes under /sys/fs/.
    assert!(
        !mount.mount_path.starts_with("/sys/"),
        "{}",
        mount.mount_path
    );
    // The pins are the host's /sys/fs/bpf/lb, where lbctl on the host looks by default.
    let pin = r.run_args().pin_path;
    let in_bpffs = pin
        .strip_prefix(&mount.mount_path)
        .unwrap_or_else(|_| panic!("--pin-path {} outside the bpffs mount", pin.display()));
    assert_eq!(
        Path::new(&host.path).join(in_bpffs),
        Path::new(lb::dataplane::DEFAULT_PIN_PATH)
    );
}

#[test]
fn only_the_capabilities_the_agent_needs() {
    let r = render();
    let sc = r
        .agent()
        .security_context
        .as_ref()
        .expect("securityContext");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    // What the agent was measured to need (tests/tests/lab_agent_caps.rs runs it with these).
    assert_eq!(added, BTreeSet::from_iter(RUN_CAPABILITIES.iter().copied()));
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // Root for the root-owned pins, with no capability beyond the three (docs/install.md).
    assert_eq!(sc.run_as_user, Some(0));
    let resources = r.agent().resources.as_ref().expect("resources");
    for (what, list) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let list = list.as_ref().unwrap_or_else(|| panic!("no {what}"));
        assert!(
            list.contains_key("cpu") && list.contains_key("memory"),
            "{what}: {list:?}"
        );
    }
}

#[test]
fn the_cleanup_daemonset_removes_what_the_agent_pinned() {
    let agent = render();
    let docs = rendered_docs("deploy/cleanup");
    assert_eq!(docs.len(), 1, "only the DaemonSet");
    let ds: DaemonSet = serde_json::from_value(docs[0].clone()).expect("DaemonSet");
    let pod = ds.spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.host_network,
        Some(true),
        "links are detached in the host's namespace"
    );
    // The cleanup needs bpffs only.
    assert_eq!(
        pod.volumes.as_deref().unwrap_or_default(),
        &agent.pod().volumes.as_deref().unwrap_or_default()[..1]
    );
    let [init] = pod.init_containers.as_deref().unwrap_or_default() else {
        panic!("one init container")
    };
    let argv: Vec<&String> = init.command.iter().chain(&init.args).flatten().collect();
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let AgentCommand::Cleanup { pin_path } = cli.command else {
        panic!("{argv:?} is not `lb-agent cleanup`")
    };
    assert_eq!(pin_path, agent.run_args().pin_path);
    assert_eq!(
        init.volume_mounts.as_deref().unwrap_or_default(),
        &agent.agent().volume_mounts.as_deref().unwrap_or_default()[..1]
    );
    let caps = init
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        BTreeSet::from_iter(CLEANUP_CAPABILITIES.iter().copied())
    );
}

#[test]
fn every_agent_flag_is_documented_with_its_default_and_env() {
    let doc = std::fs::read_to_string(repo().join("docs/flags.md")).expect("docs/flags.md");
    let cmd = Cli::command();
    for sub in ["run", "cleanup"] {
        let heading = format!("## `lb-agent {sub}`");
        let section = doc
            .split_once(&heading)
            .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
            .unwrap_or_else(|| panic!("docs/flags.md has no {heading}"));
        let sub = cmd.find_subcommand(sub).expect("subcommand");
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let row = section
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}")))
                .unwrap_or_else(|| panic!("{heading}: no row for --{long}"));
            for default in arg.get_default_values() {
                let default = format!("`{}`", default.to_string_lossy());
                assert!(row.contains(&default), "--{long}: default {default}");
            }
            if let Some(env) = arg.get_env() {
                let env = format!("`{}`", env.to_string_lossy());
                assert!(row.contains(&env), "--{long}: env {env}");
            }
        }
    }
}

#[test]
fn the_image_is_built_by_the_command_ci_runs() {
    let root = repo();
    let read = |p: &str| {
        std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("reading {p}: {e}"))
    };
    let dockerfile = read("deploy/image/Dockerfile");
    let ci = read(".ci/run");
    let runs: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("RUN cargo "))
        .collect();
    assert_eq!(
        runs,
        ["xtask setup --build-only", "xtask dist --out /dist"],
        "the image builds with xtask, nothing else"
    );
    assert!(
        ci.lines().any(|l| l.starts_with("cargo xtask dist --out ")),
        ".ci/run builds what the image ships"
    );
    assert!(dockerfile.contains("COPY --from=build /dist/ /usr/local/bin/"));
    // The toolchain layer runs xtask from the manifests alone: cargo wants every member's.
    let manifest = read("Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = ["))
        .expect("workspace members");
    for member in members.trim_end_matches(']').split(',') {
        let member = member.trim().trim_matches('"');
        if member == "xtask" {
            continue;
        }
        let copy = format!("COPY {member}/Cargo.toml {member}/");
        assert!(dockerfile.contains(&copy), "the Dockerfile lacks `{copy}`");
    }
}
