//! Attaching programs through bpf links pinned under `PIN/links`, so attachments survive the
//! agent. A restarted agent finds the pin and swaps its freshly loaded program into the existing
//! link (bpf_link_update: atomic, no packet sees an interface without a program).
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions, TcAttachType},
    xdp::XdpLink,
    LinkOrder, SchedClassifier, Xdp, XdpMode,
};

use super::pins::PinLayout;

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpRequest {
    Native,
    Generic,
    Off,
}

/// How the north-south program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeUsed {
    Native,
    Generic,
    /// TC ingress instead of XDP.
    Off,
    /// An existing link from a previous agent now runs the new program (its mode is unchanged).
    Replaced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    Ext,
    Pod,
}

impl TcHook {
    fn pin_name(self) -> &'static str {
        match self {
            TcHook::Ext => "tc-ext",
            TcHook::Pod => "tc-pod",
        }
    }
}

const XDP_PIN: &str = "xdp";

pub struct Links {
    layout: PinLayout,
}

pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("interface {iface}: {}", std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// Open a pinned link if one is there and still usable.
fn pinned(path: &Path) -> Option<FdLink> {
    path.exists()
        .then(|| PinnedLink::from_pin(path).ok().map(FdLink::from))
        .flatten()
}

impl Links {
    pub fn new(layout: PinLayout) -> Self {
        Links { layout }
    }

    pub fn attach_xdp(
        &mut self,
        prog: &mut Xdp,
        iface: &str,
        ifindex: u32,
        req: XdpRequest,
    ) -> Result<XdpModeUsed> {
        let path = self.layout.link(ifindex, XDP_PIN);
        if let Some(link) = pinned(&path) {
            match XdpLink::try_from(link)
                .map_err(anyhow::Error::from)
                .and_then(|l| prog.attach_to_link(l).map_err(anyhow::Error::from))
            {
                Ok(_) => return Ok(XdpModeUsed::Replaced),
                // The interface behind it went away (or was recreated): start over.
                Err(e) => {
                    tracing::info!("{iface}: stale XDP link pin ({e:#}), attaching anew");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        let (id, used) = match req {
            XdpRequest::Native => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => (id, XdpModeUsed::Native),
                Err(e) => {
                    tracing::warn!(
                        "{iface}: native XDP unavailable ({e}), falling back to generic"
                    );
                    (
                        prog.attach_to_if_index(ifindex, XdpMode::Skb)?,
                        XdpModeUsed::Generic,
                    )
                }
            },
            _ => (
                prog.attach_to_if_index(ifindex, XdpMode::Skb)?,
                XdpModeUsed::Generic,
            ),
        };
        let link = FdLink::try_from(prog.take_link(id)?)?;
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(used)
    }

    pub fn attach_tc(
        &mut self,
        prog: &mut SchedClassifier,
        iface: &str,
        ifindex: u32,
        hook: TcHook,
    ) -> Result<()> {
        let path = self.layout.link(ifindex, hook.pin_name());
        if let Some(link) = pinned(&path) {
            match SchedClassifierLink::try_from(link)
                .map_err(anyhow::Error::from)
                .and_then(|l| prog.attach_to_link(l).map_err(anyhow::Error::from))
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::info!("{iface}: stale TC link pin ({e:#}), attaching anew");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        // tcx (Linux 6.6+) gives a bpf link that can be pinned and updated in place.
        let id = prog
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("{iface}: attaching TC ingress (tcx needs Linux 6.6+)"))?;
        let link = FdLink::try_from(prog.take_link(id)?)?;
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(())
    }

    /// Remove the pins of an interface's links: the last reference goes, the program detaches.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        for hook in [XDP_PIN, TcHook::Ext.pin_name(), TcHook::Pod.pin_name()] {
            let path = self.layout.link(ifindex, hook);
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }

    pub fn ifindexes(&self) -> Vec<u32> {
        let mut all: Vec<u32> = std::fs::read_dir(self.layout.links_dir())
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .split('-')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}
