//! The kernel side of lb as a library: load the BPF object with its maps pinned (adopting the
//! maps a previous agent left), attach programs to interfaces through pinned links (replacing
//! programs atomically on restart; TC falls back to netlink filters on kernels without tcx),
//! and the typed map API in `maps`.
mod attach;
mod batch;
mod compat;
pub mod conntrack;
pub mod maps;
mod migrate;
pub mod pins;
pub mod reconcile;
pub mod socket_lb;
pub mod view;
pub mod xdp_mode;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{DevMapHash, MapData},
    programs::{CgroupSockAddr, SchedClassifier, TracePoint, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{map_names as names, Config, IfaceInfo, IFACE_EXTERNAL, IFACE_POD, IFACE_TUNNEL};

pub use attach::{ifindex, TcHook, TcMode, TC_NETLINK_PRIORITY};
pub use maps::{Capacities, Maps};
pub use pins::{PinLayout, DEFAULT_PIN_PATH};
pub use reconcile::ServiceMaps;
pub use socket_lb::SocketLbMode;
pub use xdp_mode::{XdpModeUsed, XdpReason, XdpRequest};

/// The compiled lb-ebpf object, built by build.rs (public for the tests that read it:
/// tests/tests/ebpf_stack.rs).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

pub const PROG_XDP_EXT: &str = "lb_xdp_ext";
pub const PROG_TC_EXT: &str = "lb_tc_ext";
pub const PROG_TC_HANDOFF: &str = "lb_tc_handoff";
pub const PROG_TC_POD: &str = "lb_tc_pod";
pub const PROG_TC_EGRESS: &str = "lb_tc_egress";
/// Bare programs for benchmarks: XDP_PASS, XDP_TX and XDP_DROP (lb-ebpf's main.rs).
pub const PROG_XDP_FLOOR: &str = "lb_xdp_floor";
pub const PROG_XDP_FLOOR_TX: &str = "lb_xdp_floor_tx";
pub const PROG_XDP_SINK: &str = "lb_xdp_sink";
/// Tracepoints counting transmitted frames the kernel dropped, with the events they attach to.
const XMIT_COUNTERS: [(&str, &str); 4] = [
    ("lb_xmit_bulk_tx", "xdp_bulk_tx"),
    ("lb_xmit_devmap", "xdp_devmap_xmit"),
    ("lb_xmit_error", "xdp_redirect_err"),
    ("lb_xmit_error", "xdp_exception"),
];

#[derive(Clone, Debug)]
pub struct Options {
    pub pin_path: PathBuf,
    /// Map capacity overrides by map name (tests use small maps; defaults in lb_common::capacity).
    pub capacities: Vec<(&'static str, u32)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            capacities: Vec::new(),
        }
    }
}

/// What [`Dataplane::attach_ext`] attached, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub mode: XdpModeUsed,
    pub reason: XdpReason,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    layout: PinLayout,
    links: attach::Links,
    /// `LB_XDP_TX_PORTS`: the interfaces XDP redirects to (the agent's alone: lbctl never
    /// reads it, so it is not in [`Maps`]).
    tx_ports: DevMapHash<MapData>,
    /// The transmit-drop tracepoints are attached (once, with the first XDP attachment).
    counting_xmit: bool,
    /// Every external interface, for the XDP mode choice (see [`Dataplane::set_external`]).
    external: Vec<String>,
}

impl Dataplane {
    /// Load the programs and create or adopt the pinned maps. Nothing is attached yet.
    pub fn open(opts: &Options) -> Result<Self> {
        let layout = PinLayout::new(&opts.pin_path);
        layout.create()?;
        for other in layout.foreign_versions() {
            tracing::warn!(
                "{} holds maps of another lb version ({other}); they are not adopted",
                layout.root().display()
            );
        }
        let maps_dir = layout.maps_dir();
        compat::check_pinned(&layout, OBJECT)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&maps_dir);
        // A BTF map (socket storage) has no pinning attribute: pinned by name here, so that the
        // next agent's hooks find what this one's recorded for live sockets.
        for sock_rnat in [names::SOCK_RNAT4, names::SOCK_RNAT6] {
            loader.map_pin_path(sock_rnat, maps_dir.join(sock_rnat));
        }
        for (name, size) in &opts.capacities {
            loader.map_max_entries(name, *size);
        }
        let mut ebpf = loader.load(OBJECT).context("loading the lb BPF object")?;
        for name in [
            PROG_XDP_EXT,
            PROG_XDP_FLOOR,
            PROG_XDP_FLOOR_TX,
            PROG_XDP_SINK,
        ] {
            xdp_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        for name in [PROG_TC_EXT, PROG_TC_HANDOFF, PROG_TC_POD, PROG_TC_EGRESS] {
            tc_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        let mut tracepoints: Vec<&str> = XMIT_COUNTERS.iter().map(|c| c.0).collect();
        tracepoints.dedup();
        for name in tracepoints {
            tracepoint_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        let tx_ports = ebpf
            .take_map(names::XDP_TX_PORTS)
            .with_context(|| format!("map {} missing from the object", names::XDP_TX_PORTS))?
            .try_into()?;
        let mut maps = Maps::from_loaded(&mut ebpf)?;
        ensure_config(&mut maps)?;
        migrate::service_names(&layout, &mut maps)?;
        Ok(Dataplane {
            ebpf,
            maps,
            links: attach::Links::new(layout.clone()),
            layout,
            tx_ports,
            counting_xmit: false,
            external: Vec::new(),
        })
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// How later TC attachments are made (default [`TcMode::Auto`]: tcx, or netlink filters on
    /// kernels without tcx). Whatever a previous agent attached is taken over either way: in
    /// the other mode, the new attachment is made first and the old one removed after it.
    pub fn set_tc_mode(&mut self, mode: TcMode) {
        self.links.mode = mode;
    }

    pub fn tc_mode(&self) -> TcMode {
        self.links.mode
    }

    /// How lb's TC program for `hook` is attached to the interface with this index (by the
    /// pins: [`TcMode::Tcx`] or [`TcMode::Netlink`]), or None.
    pub fn tc_attachment(&self, ifindex: u32, hook: TcHook) -> Option<TcMode> {
        self.links.tc_mode_of(ifindex, hook)
    }

    /// A loaded XDP program, e.g. for BPF_PROG_TEST_RUN.
    pub fn xdp(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// A loaded XDP program to attach by hand (benchmarks: a sink at the far end of a veth).
    pub fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        xdp_mut(&mut self.ebpf, name)
    }

    /// Benchmarks only: the frame `lb_xdp_sink` writes back into the frames it receives.
    pub fn set_bench_frame(&mut self, frame: &[u8; lb_common::BENCH_FRAME_LEN]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(names::BENCH_FRAME)
            .context("no bench frame map")?;
        let mut array: aya::maps::Array<_, [u8; lb_common::BENCH_FRAME_LEN]> =
            aya::maps::Array::try_from(map)?;
        array.set(0, frame, 0)?;
        Ok(())
    }

    pub fn tc(&self, name: &str) -> Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// The external interfaces, all of them: `--xdp-mode auto` runs native XDP on a network card
    /// only when the others are cards too (native XDP_REDIRECT cannot reach software devices).
    pub fn set_external<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        self.external = names.into_iter().cloned().collect();
    }

    /// Attach the north-south program to an external interface: XDP in the mode `req` gives
    /// this device (see [`xdp_mode`]) with the handoff program on TC ingress beside it (what XDP
    /// translated but cannot transmit, it sends on), or lb_tc_ext on TC ingress when XDP is off.
    /// The choice is recorded in `LB_IFACES` for lbctl and the next agent.
    pub fn attach_ext(&mut self, iface: &str, req: XdpRequest) -> Result<Attached> {
        let ifindex = attach::ifindex(iface)?;
        let siblings: Vec<_> = self
            .external
            .iter()
            .filter(|name| *name != iface)
            .map(|name| xdp_mode::device(name))
            .collect();
        let (plan, mut reason) = xdp_mode::choose(req, xdp_mode::device(iface).as_ref(), &siblings);
        let mode = if plan == xdp_mode::XdpPlan::Off {
            self.attach_tc_ext(iface, ifindex)?;
            XdpModeUsed::Off
        } else {
            let pinned = self
                .maps
                .iface(ifindex)
                .filter(|r| r.role == IFACE_EXTERNAL)
                .and_then(|r| {
                    Some((
                        XdpModeUsed::from_code(r.xdp_mode)?,
                        XdpReason::from_code(r.reason)?,
                    ))
                });
            let prog = xdp_mut(&mut self.ebpf, PROG_XDP_EXT)?;
            let used = self.links.attach_xdp(prog, iface, ifindex, plan, pinned)?;
            // ... or with --xdp-mode off: its TC program (in the same hook) is replaced by the
            // handoff, XDP does the work now.
            let handoff = tc_mut(&mut self.ebpf, PROG_TC_HANDOFF)?;
            let tc = self.links.attach_tc(handoff, iface, ifindex, TcHook::Ext)?;
            tracing::debug!("{iface}: {PROG_TC_HANDOFF} attached ({tc:?})");
            if plan == xdp_mode::XdpPlan::Native && used == XdpModeUsed::Generic {
                reason = XdpReason::NoNativeXdp;
            }
            self.maps.count_xmit_drops(ifindex)?;
            self.count_xmit();
            self.tx_ports
                .insert(ifindex, ifindex, None, 0)
                .with_context(|| format!("{iface}: adding it to {}", names::XDP_TX_PORTS))?;
            used
        };
        self.attach_egress(iface, ifindex)?;
        self.record(ifindex, iface, IFACE_EXTERNAL, mode, reason)?;
        Ok(Attached { mode, reason })
    }

    /// Attach to a tunnel device of the pod overlay (vxlan, geneve): the north-south program on
    /// TC ingress, where the replies to flows SNATed to the tunnel's address arrive, and TC
    /// egress. No XDP: XDP never transmits into a tunnel (`LB_XDP_TX_PORTS`), and TC sees the
    /// decapsulated frame on every kernel.
    pub fn attach_tunnel(&mut self, iface: &str) -> Result<()> {
        let ifindex = attach::ifindex(iface)?;
        self.attach_tc_ext(iface, ifindex)?;
        self.attach_egress(iface, ifindex)?;
        self.record(
            ifindex,
            iface,
            IFACE_TUNNEL,
            XdpModeUsed::Off,
            XdpReason::Tunnel,
        )
    }

    /// lb_tc_ext on TC ingress, and no XDP.
    fn attach_tc_ext(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        let prog = tc_mut(&mut self.ebpf, PROG_TC_EXT)?;
        let used = self.links.attach_tc(prog, iface, ifindex, TcHook::Ext)?;
        tracing::debug!("{iface}: {PROG_TC_EXT} attached ({used:?})");
        // A previous agent may have run with XDP here: its program must not keep running.
        self.links.detach_xdp(ifindex)?;
        self.forget_tx_port(ifindex)
    }

    /// Attach the pod-side program to a host-side pod interface (TC ingress = pod egress).
    pub fn attach_pod(&mut self, iface: &str) -> Result<()> {
        let ifindex = attach::ifindex(iface)?;
        let prog = tc_mut(&mut self.ebpf, PROG_TC_POD)?;
        let used = self.links.attach_tc(prog, iface, ifindex, TcHook::Pod)?;
        tracing::debug!("{iface}: {PROG_TC_POD} attached ({used:?})");
        self.attach_egress(iface, ifindex)?;
        self.record(ifindex, iface, IFACE_POD, XdpModeUsed::Off, XdpReason::Pod)
    }

    /// TC egress, on external and pod interfaces alike: replies the node itself sends as a
    /// Service's endpoint get their frontend back as they leave (`lb::egress`).
    fn attach_egress(&mut self, iface: &str, ifindex: u32) -> Result<()> {
        let prog = tc_mut(&mut self.ebpf, PROG_TC_EGRESS)?;
        let used = self.links.attach_tc(prog, iface, ifindex, TcHook::Egress)?;
        tracing::debug!("{iface}: {PROG_TC_EGRESS} attached ({used:?})");
        Ok(())
    }

    /// Attach the cgroup socket hooks to the cgroup v2 directory `cgroup` (see
    /// [`socket_lb::resolve_cgroup`]) and have them translate the sockets `mode` says (`Off`:
    /// detach them). Affinity for the node's own sockets is keyed by `node_addr`. Returns
    /// the cgroup attached to.
    pub fn set_socket_lb(
        &mut self,
        mode: SocketLbMode,
        cgroup: &std::path::Path,
        node_addr: std::net::Ipv4Addr,
    ) -> Result<PathBuf> {
        if mode == SocketLbMode::Off {
            self.maps.set_sock_config(&Default::default())?;
            for (_, hook) in socket_lb::HOOKS {
                self.links.detach_cgroup(hook)?;
            }
            return Ok(cgroup.to_path_buf());
        }
        let cgroup = socket_lb::resolve_cgroup(cgroup)?;
        let cfg = socket_lb::config(mode, &cgroup, node_addr)?;
        self.maps.set_sock_config(&cfg)?;
        let dir = std::fs::File::open(&cgroup)
            .with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
        for (name, hook) in socket_lb::HOOKS {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("verifying {name}"))?;
            }
            self.links.attach_cgroup(prog, hook, &dir)?;
        }
        Ok(cgroup)
    }

    /// The source ports SNAT takes, `min..=max` (new flows use them at once; flows holding a
    /// port outside keep it).
    pub fn set_snat_ports(&mut self, (min, max): (u16, u16)) -> Result<()> {
        let config = self.maps.config()?;
        if (config.snat_port_min, config.snat_port_max) == (min, max) {
            return Ok(());
        }
        self.maps.set_config(&Config {
            snat_port_min: min,
            snat_port_max: max,
            ..config
        })
    }

    /// The node address session affinity is keyed by for the node's own sockets (it follows
    /// the node's addresses).
    pub fn set_socket_node_addr(&mut self, addr: std::net::Ipv4Addr) -> Result<()> {
        let mut cfg = self.maps.sock_config()?;
        let addr = u32::from_ne_bytes(addr.octets());
        if cfg.mode != lb_common::SOCK_LB_OFF && cfg.node_addr != addr {
            cfg.node_addr = addr;
            self.maps.set_sock_config(&cfg)?;
        }
        Ok(())
    }

    /// The node's IPv6 address for the IPv6 socket hooks (None: the node has none).
    pub fn set_socket_node_addr6(&mut self, addr: Option<std::net::Ipv6Addr>) -> Result<()> {
        let want = lb_common::SockConfig6 {
            node_addr: addr.map_or([0; 4], reconcile::KernelFamily::kernel),
        };
        if self.maps.sock_config6() != Some(want) {
            self.maps.set_sock_config6(&want)?;
        }
        Ok(())
    }

    /// Attach the transmit-drop tracepoints, pinned so that they outlive the agent (each one
    /// replaces the previous agent's). A failure (no tracefs, say) only loses the counts.
    fn count_xmit(&mut self) {
        if self.counting_xmit {
            return;
        }
        self.counting_xmit = true;
        mount_tracefs();
        for (prog, event) in XMIT_COUNTERS {
            let result = tracepoint_mut(&mut self.ebpf, prog)
                .and_then(|p| self.links.attach_tracepoint(p, "xdp", event));
            if let Err(e) = result {
                tracing::warn!("transmit drops on xdp:{event} are not counted: {e:#}");
            }
        }
    }

    fn record(
        &mut self,
        ifindex: u32,
        iface: &str,
        role: u8,
        mode: XdpModeUsed,
        reason: XdpReason,
    ) -> Result<()> {
        let mut info = IfaceInfo {
            role,
            xdp_mode: mode.code(),
            reason: reason as u8,
            ..Default::default()
        };
        reconcile::copy_padded(&mut info.name, iface.as_bytes());
        self.maps.set_iface(ifindex, &info)
    }

    /// Detach whatever lb attached to the interface with this index (it may be gone already).
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        self.maps.remove_iface(ifindex)?;
        self.forget_tx_port(ifindex)?;
        self.links.detach(ifindex)
    }

    /// XDP no longer redirects to this interface (the kernel removes a vanished one itself).
    fn forget_tx_port(&mut self, ifindex: u32) -> Result<()> {
        maps::ignore_missing(self.tx_ports.remove(ifindex))
            .with_context(|| format!("ifindex {ifindex}: {}", names::XDP_TX_PORTS))
    }

    /// Interfaces with an lb program attached, by ifindex.
    pub fn attached(&self) -> Vec<u32> {
        self.links.ifindexes()
    }
}

/// Remove every program attachment (pinned links, and the netlink TC filters recorded there) and
/// pinned map under `pin_path`. Run it in the network namespace the interfaces are in.
pub fn cleanup(pin_path: &std::path::Path) -> Result<()> {
    let layout = PinLayout::new(pin_path);
    // Not under a running agent, which would put back what this removes.
    let _lock = match pin_path.exists() {
        true => Some(layout.lock()?),
        false => None,
    };
    layout.remove_all()
}

fn ensure_config(maps: &mut Maps) -> Result<()> {
    let current = maps.config()?;
    if current.abi_version == 0 {
        maps.set_config(&Config::default())?;
    } else if current.abi_version != lb_common::ABI_VERSION {
        bail!("pinned config has ABI version {}", current.abi_version);
    }
    Ok(())
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

/// Tracepoints are found through tracefs, which a fresh sysfs (a container's, `ip netns exec`'s)
/// does not have mounted: mount it where the kernel expects it. Without the privilege to (a
/// container without CAP_SYS_ADMIN: the DaemonSet mounts the host's instead) the attach that
/// follows says what is missing.
fn mount_tracefs() {
    const TRACEFS: &str = "/sys/kernel/tracing";
    let mounted = [TRACEFS, "/sys/kernel/debug/tracing"]
        .iter()
        .any(|d| std::path::Path::new(d).join("events").is_dir());
    if mounted {
        return;
    }
    let (Ok(src), Ok(dir), Ok(fs)) = (
        std::ffi::CString::new("tracefs"),
        std::ffi::CString::new(TRACEFS),
        std::ffi::CString::new("tracefs"),
    ) else {
        return;
    };
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!("mounting tracefs on {TRACEFS}: {e}");
    }
}

fn tracepoint_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut TracePoint> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

fn tc_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}
