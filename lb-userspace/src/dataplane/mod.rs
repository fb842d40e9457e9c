//! The kernel side of lb as a library: load the BPF object with its maps pinned (adopting the
//! maps a previous agent left), attach programs to interfaces through pinned links (replacing
//! programs atomically on restart; TC falls back to netlink filters on kernels without tcx),
//! and the typed map API in `maps`.
mod attach;
pub mod conntrack;
pub mod maps;
pub mod pins;
pub mod reconcile;
pub mod view;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::Config;

pub use attach::{ifindex, TcHook, TcMode, XdpModeUsed, XdpRequest, TC_NETLINK_PRIORITY};
pub use maps::{Capacities, Maps};
pub use pins::{PinLayout, DEFAULT_PIN_PATH};

/// The compiled lb-ebpf object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

pub const PROG_XDP_EXT: &str = "lb_xdp_ext";
pub const PROG_TC_EXT: &str = "lb_tc_ext";
pub const PROG_TC_POD: &str = "lb_tc_pod";
/// Bare programs for benchmarks: XDP_PASS, XDP_TX and XDP_DROP (lb-ebpf's main.rs).
pub const PROG_XDP_FLOOR: &str = "lb_xdp_floor";
pub const PROG_XDP_FLOOR_TX: &str = "lb_xdp_floor_tx";
pub const PROG_XDP_SINK: &str = "lb_xdp_sink";

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

pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    layout: PinLayout,
    links: attach::Links,
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
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&maps_dir);
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
        for name in [PROG_TC_EXT, PROG_TC_POD] {
            tc_mut(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        let mut maps = Maps::from_loaded(&mut ebpf)?;
        ensure_config(&mut maps)?;
        Ok(Dataplane {
            ebpf,
            maps,
            links: attach::Links::new(layout.clone()),
            layout,
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
            .map_mut(lb_common::map_names::BENCH_FRAME)
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

    /// Attach the north-south program to an external interface: XDP as requested (native falls
    /// back to generic), or TC ingress when XDP is off.
    pub fn attach_ext(&mut self, iface: &str, xdp: XdpRequest) -> Result<XdpModeUsed> {
        let ifindex = attach::ifindex(iface)?;
        if xdp == XdpRequest::Off {
            let prog = tc_mut(&mut self.ebpf, PROG_TC_EXT)?;
            let used = self.links.attach_tc(prog, iface, ifindex, TcHook::Ext)?;
            tracing::debug!("{iface}: {PROG_TC_EXT} attached ({used:?})");
            // A previous agent may have run with XDP here: its program must not keep running.
            self.links.detach_xdp(ifindex)?;
            return Ok(XdpModeUsed::Off);
        }
        let prog = xdp_mut(&mut self.ebpf, PROG_XDP_EXT)?;
        let used = self.links.attach_xdp(prog, iface, ifindex, xdp)?;
        // ... or with --xdp-mode off: its TC program goes, XDP does the work now.
        self.links.detach_tc(ifindex, TcHook::Ext)?;
        Ok(used)
    }

    /// Attach the pod-side program to a host-side pod interface (TC ingress = pod egress).
    pub fn attach_pod(&mut self, iface: &str) -> Result<()> {
        let ifindex = attach::ifindex(iface)?;
        let prog = tc_mut(&mut self.ebpf, PROG_TC_POD)?;
        let used = self.links.attach_tc(prog, iface, ifindex, TcHook::Pod)?;
        tracing::debug!("{iface}: {PROG_TC_POD} attached ({used:?})");
        Ok(())
    }

    /// Detach whatever lb attached to the interface with this index (it may be gone already).
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        self.links.detach(ifindex)
    }

    /// Interfaces with an lb program attached, by ifindex.
    pub fn attached(&self) -> Vec<u32> {
        self.links.ifindexes()
    }
}

/// Remove every program attachment (pinned links, and the netlink TC filters recorded there) and
/// pinned map under `pin_path`. Run it in the network namespace the interfaces are in.
pub fn cleanup(pin_path: &std::path::Path) -> Result<()> {
    PinLayout::new(pin_path).remove_all()
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

fn tc_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}
