//! The netlink/clsact TC fallback (kernels before 6.6 have no tcx), forced on this kernel with
//! `TcMode::Netlink`, in network namespaces: lb_tc_pod as a cls_bpf filter load-balances real
//! TCP from a pod through a ClusterIP; the filter outlives the Dataplane that attached it; a
//! restarted Dataplane swaps its program into the same filter (still exactly one lb filter,
//! established connections keep working); Auto mode takes the filter over (tcx on 6.6+, the
//! netlink fallback before); detach and cleanup remove lb's filter. Passes on 6.1 too.
use lb::dataplane::ServiceMaps;
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use aya::programs::{loaded_programs, tc::TcAttachType, SchedClassifier};
use lb::dataplane::{
    self, Dataplane, Options, TcHook, TcMode, XdpModeUsed, XdpReason, XdpRequest,
    TC_NETLINK_PRIORITY,
};
use lb_common::{Backend4, BE_F_LOCAL, PROTO_TCP};
use lb_tests::{
    lab::{poll_until, require_privileged, wait_until, Lab, Netns},
    topology,
};

const T: Duration = Duration::from_secs(2);

fn addr(s: &str) -> u32 {
    u32::from_ne_bytes(s.parse::<Ipv4Addr>().expect("ip").octets())
}

/// A pod namespace on a host-side veth `host_if` of `node`, routed /32 (as in lab_clusterip).
fn pod(lab: &Lab, node: &Netns, name: &str, ip: &str, host_if: &str) -> Netns {
    lb_tests::topology::pod(lab, node, name, ip, host_if).expect("pod")
}

fn options(pin: &Path) -> Options {
    Options {
        pin_path: pin.to_path_buf(),
        ..Default::default()
    }
}

/// Opens the dataplane on `pin` in `node` (adopting what is pinned there), attaches lb_tc_pod to
/// `ifaces` in `mode`, runs `f` on it and drops it (programs stay attached).
fn with_dataplane<R: Send>(
    node: &Netns,
    pin: &Path,
    mode: TcMode,
    ifaces: &[&str],
    f: impl FnOnce(&mut Dataplane) -> R + Send,
) -> R {
    node.in_netns(|| {
        let mut dp = Dataplane::open(&options(pin)).expect("dataplane");
        dp.set_tc_mode(mode);
        for iface in ifaces {
            dp.attach_pod(iface)
                .unwrap_or_else(|e| panic!("attach {iface} ({mode:?}): {e:#}"));
        }
        f(&mut dp)
    })
    .expect("in node netns")
}

/// The filters on `iface`'s ingress, one line each (`tc filter show` prints a header line per
/// priority and one line with a handle per filter).
fn ingress_filters(node: &Netns, iface: &str) -> Vec<String> {
    node.run(&format!("tc filter show dev {iface} ingress"))
        .expect("tc filter show")
        .lines()
        .filter(|l| l.contains(" handle "))
        .map(str::to_owned)
        .collect()
}

/// Asserts that `iface` has exactly one ingress filter and that it is lb's lb_tc_pod at lb's
/// priority and handle; returns the id of the program in it.
fn one_lb_filter(node: &Netns, iface: &str) -> u32 {
    let filters = ingress_filters(node, iface);
    assert_eq!(
        filters.len(),
        1,
        "{iface}: exactly one filter: {filters:#?}"
    );
    let f = &filters[0];
    eprintln!("{iface}: {f}");
    for want in [
        format!("pref {TC_NETLINK_PRIORITY} "),
        format!("handle {:#x} ", TcHook::Pod.netlink_handle()),
        "lb_tc_pod".to_string(),
        "direct-action".to_string(),
    ] {
        assert!(f.contains(&want), "{iface}: {want:?} in {f:?}");
    }
    let mut words = f.split_whitespace();
    words.find(|w| *w == "id");
    words
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{iface}: no program id in {f:?}"))
}

/// Number of tcx programs on `iface`'s ingress, or None on a kernel without tcx (before 6.6).
fn tcx_programs(node: &Netns, iface: &str) -> Option<usize> {
    let iface = iface.to_string();
    node.in_netns(
        move || match SchedClassifier::query_tcx(&iface, TcAttachType::Ingress) {
            Ok((_, progs)) => Some(progs.len()),
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                None
            }
            Err(e) => panic!("query tcx on {iface}: {e}"),
        },
    )
    .expect("in node netns")
}

/// The id of the program pinned at `path`.
fn pinned_prog_id(path: &Path) -> u32 {
    SchedClassifier::from_pin(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .info()
        .expect("program info")
        .id()
}

fn program_loaded(id: u32) -> bool {
    loaded_programs().any(|p| p.map(|p| p.id() == id).unwrap_or(false))
}

fn program_clusterip(dp: &mut Dataplane) {
    let be = Backend4 {
        addr: addr("10.244.1.7"),
        port: 8080u16.to_be(),
        flags: BE_F_LOCAL,
        _pad: 0,
    };
    ServiceMaps::<Ipv4Addr>::set_backend(&mut dp.maps, 1, &be).expect("backend");
    topology::program_clusterip(dp, 1, "10.96.0.10", PROTO_TCP, 80, &[1]).expect("program");
}

#[test]
fn netlink_filter_balances_survives_restart_in_place_and_is_cleaned_up() {
    if !require_privileged("lab_tc_netlink::netlink_filter_balances") {
        return;
    }
    let lab = Lab::new("lab-tcnl").expect("lab");
    lab.set_echo_bin(env!("CARGO_BIN_EXE_lb-echo"));
    let node = lab.netns("node").expect("node");
    node.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    let client = pod(&lab, &node, "client", "10.244.1.5", "h1");
    let server = pod(&lab, &node, "server", "10.244.1.7", "h2");
    let pin = lab.pin_path("node");
    let ifindex = |iface| node.ifindex(iface).expect("ifindex");
    let (h1, h2) = (ifindex("h1"), ifindex("h2"));
    let layout = dataplane::PinLayout::new(&pin);
    let marker = |i: u32| layout.links_dir().join(format!("{i}-tc-pod-nl"));

    // First agent: netlink mode; the Dataplane (and with it aya's program and link objects) is
    // dropped at the end of the closure, as when the agent exits.
    let modes = with_dataplane(&node, &pin, TcMode::Netlink, &["h1", "h2"], |dp| {
        program_clusterip(dp);
        let mut attached = dp.attached();
        attached.sort_unstable();
        assert_eq!(attached, {
            let mut v = vec![h1, h2];
            v.sort_unstable();
            v
        });
        [h1, h2].map(|i| dp.tc_attachment(i, TcHook::Pod))
    });
    assert_eq!(modes, [Some(TcMode::Netlink); 2]);
    assert!(marker(h1).exists() && marker(h2).exists());
    assert!(
        !layout.link(h1, "tc-pod").exists(),
        "no tcx link in netlink mode"
    );
    let before = [one_lb_filter(&node, "h1"), one_lb_filter(&node, "h2")];
    assert!(
        matches!(tcx_programs(&node, "h1"), None | Some(0)),
        "nothing attached with tcx"
    );
    assert_eq!(pinned_prog_id(&marker(h1)), before[0]);

    let _tcp = server.serve_echo("server", 8080, false).expect("tcp echo");
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let reply = client
        .request(vip, false, T)
        .expect("reply through the ClusterIP");
    assert_eq!(reply.name, "server");
    assert_eq!(
        reply.peer.ip().to_string(),
        "10.244.1.5",
        "pod source IP kept"
    );
    // A connection established before the restart, used again after it.
    let mut conn = client.echo_conn(vip, false, T).expect("connection");
    let first = conn.ask(T).expect("first request on the connection");
    assert_eq!(first.name, "server");

    // Restart: a new Dataplane on the same pins swaps its program into the same filters.
    let modes = with_dataplane(&node, &pin, TcMode::Netlink, &["h1", "h2"], |dp| {
        [h1, h2].map(|i| dp.tc_attachment(i, TcHook::Pod))
    });
    assert_eq!(modes, [Some(TcMode::Netlink); 2]);
    let after = [one_lb_filter(&node, "h1"), one_lb_filter(&node, "h2")];
    for i in 0..2 {
        assert_ne!(
            after[i], before[i],
            "the restarted agent's program runs in the filter"
        );
    }
    assert_eq!(
        pinned_prog_id(&marker(h1)),
        after[0],
        "the record follows the program"
    );
    assert!(matches!(tcx_programs(&node, "h1"), None | Some(0)));
    // Nothing holds the first agent's programs any more: they are freed (after RCU).
    wait_until(
        Duration::from_secs(10),
        "the replaced programs to be freed",
        || (!before.iter().any(|&id| program_loaded(id))).then_some(()),
    );

    assert_eq!(
        conn.ask(T)
            .expect("established connection after the restart"),
        first
    );
    let reply = client
        .request(vip, false, T)
        .expect("new connection after restart");
    assert_eq!(reply.name, "server");
    drop(conn);

    node.in_netns(|| dataplane::cleanup(&pin))
        .expect("in node netns")
        .expect("cleanup");
    for iface in ["h1", "h2"] {
        let left = ingress_filters(&node, iface);
        assert!(left.is_empty(), "{iface}: filters after cleanup: {left:#?}");
    }
    assert!(!pin.exists(), "pin directory removed");
    for id in after {
        wait_until(Duration::from_secs(10), "lb's programs to be freed", || {
            (!program_loaded(id)).then_some(())
        });
    }
    // No lb program any more: the node has no route to the ClusterIP.
    let res = client.request(vip, false, Duration::from_millis(500));
    assert!(
        res.is_err(),
        "ClusterIP still answered after cleanup: {res:?}"
    );
}

#[test]
fn auto_and_tcx_modes_take_over_the_netlink_filter_and_detach_removes_it() {
    if !require_privileged("lab_tc_netlink::auto_and_tcx_modes_take_over") {
        return;
    }
    let lab = Lab::new("lab-tcsw").expect("lab");
    let node = lab.netns("node").expect("node");
    let _pod = lab.netns("pod").expect("pod");
    lab.veth(&_pod, "eth0", &node, "h1").expect("veth");
    let h1 = node.ifindex("h1").expect("ifindex");
    let pin = lab.pin_path("node");
    let layout = dataplane::PinLayout::new(&pin);
    let marker = layout.links_dir().join(format!("{h1}-tc-pod-nl"));
    let tcx_pin = layout.link(h1, "tc-pod");

    with_dataplane(&node, &pin, TcMode::Netlink, &["h1"], |_| ());
    let first = one_lb_filter(&node, "h1");
    assert!(marker.exists() && !tcx_pin.exists());

    if tcx_programs(&node, "h1").is_none() {
        // A kernel without tcx (before 6.6): Auto falls back to netlink and takes the filter
        // over in place; Tcx fails and leaves it alone.
        eprintln!("no tcx on this kernel: checking the Auto fallback");
        let mode = with_dataplane(&node, &pin, TcMode::Auto, &["h1"], |dp| {
            dp.tc_attachment(h1, TcHook::Pod)
        });
        assert_eq!(mode, Some(TcMode::Netlink));
        assert_ne!(one_lb_filter(&node, "h1"), first, "replaced in place");
        let err = node
            .in_netns(|| {
                let mut dp = Dataplane::open(&options(&pin)).expect("dataplane");
                dp.set_tc_mode(TcMode::Tcx);
                dp.attach_pod("h1")
            })
            .expect("in node netns");
        assert!(err.is_err(), "tcx forced on a kernel without it");
        one_lb_filter(&node, "h1");
        assert!(marker.exists() && !tcx_pin.exists());
    } else {
        // Auto on a kernel with tcx: the new link comes first, then lb's filter goes.
        let mode = with_dataplane(&node, &pin, TcMode::Auto, &["h1"], |dp| {
            dp.tc_attachment(h1, TcHook::Pod)
        });
        assert_eq!(mode, Some(TcMode::Tcx));
        assert_eq!(tcx_programs(&node, "h1"), Some(1));
        assert_eq!(ingress_filters(&node, "h1"), Vec::<String>::new());
        assert!(!marker.exists() && tcx_pin.exists());

        // And back: the filter comes first, then the tcx link goes.
        with_dataplane(&node, &pin, TcMode::Netlink, &["h1"], |_| ());
        one_lb_filter(&node, "h1");
        assert_eq!(tcx_programs(&node, "h1"), Some(0));
        assert!(marker.exists() && !tcx_pin.exists());
    }

    // Detach removes lb's filter and its record (also without a tcx link pin).
    let left = with_dataplane(&node, &pin, TcMode::Netlink, &[], |dp| {
        dp.detach(h1).expect("detach");
        dp.attached()
    });
    assert_eq!(left, Vec::<u32>::new());
    assert_eq!(ingress_filters(&node, "h1"), Vec::<String>::new());
    assert!(!marker.exists());
    node.in_netns(|| dataplane::cleanup(&pin))
        .expect("in node netns")
        .expect("cleanup");
    assert!(!pin.exists());
}

/// The names of the programs on `iface`'s TC ingress: tcx programs, or (before 6.6) filters.
fn ingress_programs(node: &Netns, iface: &str) -> Vec<String> {
    let name = iface.to_string();
    let tcx = node
        .in_netns(
            move || match SchedClassifier::query_tcx(&name, TcAttachType::Ingress) {
                Ok((_, progs)) => Some(
                    progs
                        .iter()
                        .map(|p| p.name_as_str().unwrap_or("?").to_string())
                        .collect(),
                ),
                Err(_) => None,
            },
        )
        .expect("in node netns");
    tcx.unwrap_or_else(|| {
        ingress_filters(node, iface)
            .iter()
            .filter_map(|f| f.split_whitespace().find(|w| w.starts_with("lb_")))
            .map(str::to_string)
            .collect()
    })
}

/// `--xdp-mode` changed across restarts: the external interface ends up with exactly the program
/// asked for, in the mode asked for (as the kernel reports it), never the previous agent's left
/// running beside it: XDP with lb_tc_handoff on TC ingress (XDP's handoff, in the hook where
/// lb_tc_ext runs when XDP is off), or lb_tc_ext alone. Auto on a veth is generic, also after an
/// agent that ran native there (the upgrade to the auto default), and lbctl reports the mode
/// with its reason.
#[test]
fn switching_xdp_mode_leaves_one_program_on_the_external_interface() {
    if !require_privileged("lab_tc_netlink::switching_xdp_mode") {
        return;
    }
    let lab = Lab::new("lab-xdpmode").expect("lab");
    let node = lab.netns("node").expect("node");
    let peer = lab.netns("peer").expect("peer");
    lab.veth(&node, "eth0", &peer, "eth0").expect("veth");
    let pin = lab.pin_path("node");
    let ifindex = node.ifindex("eth0").expect("ifindex");
    let layout = dataplane::PinLayout::new(&pin);
    // Off attaches TC: a tcx link, or on kernels without tcx a netlink filter and its record.
    let tc = match tcx_programs(&node, "eth0") {
        Some(_) => "tc-ext",
        None => "tc-ext-nl",
    };
    let pins = || {
        ["xdp", tc]
            .into_iter()
            .filter(|h| layout.link(ifindex, h).exists())
            .collect::<Vec<_>>()
    };
    // What `ip -d link` says runs on eth0: "xdp" (native), "xdpgeneric", or "" for none.
    let kernel_mode = || {
        let out = node.run("ip -d link show eth0").expect("ip link");
        let word = out
            .split_whitespace()
            .find(|w| w.starts_with("xdp") && !w.contains('_'));
        word.unwrap_or("").to_string()
    };
    for (mode, want_kernel, want_reported) in [
        (XdpRequest::Native, "xdp", XdpModeUsed::Native),
        (XdpRequest::Auto, "xdpgeneric", XdpModeUsed::Generic),
        (XdpRequest::Off, "", XdpModeUsed::Off),
        (XdpRequest::Generic, "xdpgeneric", XdpModeUsed::Generic),
        (XdpRequest::Native, "xdp", XdpModeUsed::Native),
        (XdpRequest::Native, "xdp", XdpModeUsed::Native),
        (XdpRequest::Auto, "xdpgeneric", XdpModeUsed::Generic),
    ] {
        // With XDP on, TC ingress holds the handoff program beside it; without, the whole TC one.
        let (want_pins, want_tc) = if want_reported == XdpModeUsed::Off {
            (vec![tc], "lb_tc_ext")
        } else {
            (vec!["xdp", tc], "lb_tc_handoff")
        };
        let got = node
            .in_netns(|| {
                let mut dp = Dataplane::open(&options(&pin)).expect("dataplane");
                dp.attach_ext("eth0", mode).expect("attach")
            })
            .expect("in node netns");
        assert_eq!(got.mode, want_reported, "{mode:?}: reported mode");
        if mode == XdpRequest::Auto {
            assert_eq!(got.reason, XdpReason::Veth, "auto on a veth");
        }
        assert_eq!(pins(), want_pins, "after a restart with {mode:?}");
        assert_eq!(
            ingress_programs(&node, "eth0"),
            [want_tc],
            "{mode:?}: TC ingress"
        );
        // The kernel releases an unpinned link asynchronously: poll.
        let settled = poll_until(Duration::from_secs(2), || {
            (kernel_mode() == want_kernel).then_some(())
        });
        assert!(
            settled.is_some(),
            "{mode:?}: the kernel runs {:?} on eth0, want {want_kernel:?}",
            kernel_mode()
        );
        let listed = lbctl_interfaces(&node, &pin);
        let want_json = (want_reported != XdpModeUsed::Off).then(|| want_reported.label());
        assert_eq!(
            listed,
            vec![(
                "eth0".to_string(),
                "external".to_string(),
                want_json.map(str::to_string),
                got.reason.explain().to_string()
            )],
            "{mode:?}: lbctl interfaces"
        );
    }
}

/// `lbctl -o json interfaces` as (name, role, xdp_mode, reason) rows.
fn lbctl_interfaces(
    node: &lb_tests::lab::Netns,
    pin: &std::path::Path,
) -> Vec<(String, String, Option<String>, String)> {
    let out = node
        .exec(
            lb_tests::topology::lbctl_bin().expect("lbctl"),
            [
                "--pin-path",
                pin.to_str().expect("pin"),
                "-o",
                "json",
                "interfaces",
            ],
        )
        .expect("lbctl interfaces");
    assert!(
        out.status.success(),
        "lbctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    rows.iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().map(str::to_string);
            (
                text("name").unwrap_or_default(),
                text("role").unwrap_or_default(),
                text("xdp_mode"),
                text("reason").unwrap_or_default(),
            )
        })
        .collect()
}
