//! Which XDP mode an external interface gets (`--xdp-mode`), and why.
//!
//! Native XDP runs in the driver and transmits with XDP_TX/XDP_REDIRECT without an skb; generic
//! XDP runs on the skb and transmits through the stack's queueing, on any device. Native is
//! faster but only where the driver delivers what lb transmits: on a veth, native XDP_TX and
//! XDP_REDIRECT frames reach the peer only when the peer runs an XDP program of its own (the
//! kernel drops them otherwise, counted in the veth's `xdp_tx_errors`), and lb does not control
//! the peer (the host side of a kind node, a router namespace). Tunnels, bridges and the other
//! software devices have no XDP transmit at all or the same kind of condition. So `auto` picks
//! native only on network cards (a device with a bus), generic everywhere else; and on a card
//! only when every other external interface is a card too, since native XDP_REDIRECT towards a
//! software device has the same problem (generic XDP redirects through the stack's queueing and
//! reaches any device).
use std::ffi::CString;

use lb_common::{XDP_MODE_GENERIC, XDP_MODE_NATIVE, XDP_MODE_NONE};

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpRequest {
    /// Per interface: native on network cards, generic on veth and other software devices.
    Auto,
    /// Native, generic where the driver has no native XDP.
    Native,
    Generic,
    /// TC ingress instead of XDP.
    Off,
}

/// How the north-south program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeUsed {
    Native,
    Generic,
    /// TC ingress instead of XDP.
    Off,
}

impl XdpModeUsed {
    pub const ALL: [XdpModeUsed; 3] = [XdpModeUsed::Native, XdpModeUsed::Generic, XdpModeUsed::Off];

    pub fn code(self) -> u8 {
        match self {
            XdpModeUsed::Native => XDP_MODE_NATIVE,
            XdpModeUsed::Generic => XDP_MODE_GENERIC,
            XdpModeUsed::Off => XDP_MODE_NONE,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            XDP_MODE_NATIVE => Some(XdpModeUsed::Native),
            XDP_MODE_GENERIC => Some(XdpModeUsed::Generic),
            XDP_MODE_NONE => Some(XdpModeUsed::Off),
            _ => None,
        }
    }

    /// As shown by lbctl and in metric labels.
    pub fn label(self) -> &'static str {
        match self {
            XdpModeUsed::Native => "native",
            XdpModeUsed::Generic => "generic",
            XdpModeUsed::Off => "off",
        }
    }
}

/// Why an interface got its mode; stored by its index in `LB_IFACES` for lbctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum XdpReason {
    /// `--xdp-mode native` or `generic` (or `off`) said so.
    Requested = 0,
    Veth = 1,
    /// A software device other than veth (no bus behind it).
    Virtual = 2,
    /// A network card: native XDP.
    Nic = 3,
    /// Native was wanted but the driver refused it.
    NoNativeXdp = 4,
    /// A pod interface: TC only.
    Pod = 5,
    /// A network card, but another external interface is a software device that native
    /// XDP_REDIRECT from it could not reach.
    SoftwareSibling = 6,
    /// A tunnel of the pod overlay: TC only.
    Tunnel = 7,
}

impl XdpReason {
    const ALL: [XdpReason; 8] = [
        XdpReason::Requested,
        XdpReason::Veth,
        XdpReason::Virtual,
        XdpReason::Nic,
        XdpReason::NoNativeXdp,
        XdpReason::Pod,
        XdpReason::SoftwareSibling,
        XdpReason::Tunnel,
    ];

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// One line for the log and lbctl.
    pub fn explain(self) -> &'static str {
        match self {
            XdpReason::Requested => "as --xdp-mode requested",
            XdpReason::Veth => {
                "veth: native XDP_TX/XDP_REDIRECT frames reach the peer only if the peer runs an \
                 XDP program, which lb does not control"
            }
            XdpReason::Virtual => {
                "software device: lb cannot rely on its driver to transmit XDP frames"
            }
            XdpReason::Nic => "network card with native XDP",
            XdpReason::NoNativeXdp => "the driver has no native XDP",
            XdpReason::Pod => "pod interface: TC programs only",
            XdpReason::SoftwareSibling => {
                "network card, but another external interface is a software device, which native \
                 XDP_REDIRECT from here could not reach"
            }
            XdpReason::Tunnel => {
                "tunnel of the pod overlay: TC programs only (replies to flows SNATed to its \
                 address come back through it)"
            }
        }
    }
}

/// What the mode choice needs to know of a device (ethtool's driver information).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub driver: String,
    /// A bus address (PCI, vmbus, ...): a network card rather than a software device.
    pub has_bus: bool,
}

/// What to attach: native (falling back to generic where the driver refuses), generic, or TC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpPlan {
    Native,
    Generic,
    Off,
}

/// The mode `req` asks for on `dev` (None: ethtool could not tell, a software device), and why;
/// `siblings` are the other external interfaces' devices (where lb may XDP_REDIRECT to).
pub fn choose(
    req: XdpRequest,
    dev: Option<&Device>,
    siblings: &[Option<Device>],
) -> (XdpPlan, XdpReason) {
    let is_card = |d: Option<&Device>| d.is_some_and(|d| d.has_bus && d.driver != "veth");
    match req {
        XdpRequest::Native => (XdpPlan::Native, XdpReason::Requested),
        XdpRequest::Generic => (XdpPlan::Generic, XdpReason::Requested),
        XdpRequest::Off => (XdpPlan::Off, XdpReason::Requested),
        XdpRequest::Auto => match dev {
            Some(d) if d.driver == "veth" => (XdpPlan::Generic, XdpReason::Veth),
            Some(_) if is_card(dev) => match siblings.iter().all(|s| is_card(s.as_ref())) {
                true => (XdpPlan::Native, XdpReason::Nic),
                false => (XdpPlan::Generic, XdpReason::SoftwareSibling),
            },
            _ => (XdpPlan::Generic, XdpReason::Virtual),
        },
    }
}

/// The device's driver as `ethtool -i` shows it; None where the device has no driver
/// information (loopback, some software devices).
pub fn device(iface: &str) -> Option<Device> {
    // struct ethtool_drvinfo (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    let name = CString::new(iface).ok()?;
    if name.as_bytes_with_nul().len() > libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid value of both plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket for the ioctl, closed below; req points at live memory.
    let ok = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        rc == 0
    };
    let text = |b: &[u8]| {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let bus = text(&info.bus_info);
    ok.then(|| Device {
        driver: text(&info.driver),
        // Software devices report nothing, or "N/A" (tun), or their own name.
        has_bus: !bus.is_empty() && bus != "N/A" && bus != "tap",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(driver: &str, has_bus: bool) -> Option<Device> {
        Some(Device {
            driver: driver.into(),
            has_bus,
        })
    }

    #[test]
    fn choose_by_request_and_device() {
        use XdpPlan::*;
        use XdpReason::*;
        let card = || dev("ixgbe", true);
        let cases = [
            // (request, device, other external interfaces, plan, reason)
            (XdpRequest::Auto, dev("veth", false), vec![], Generic, Veth),
            (
                XdpRequest::Auto,
                dev("mlx5_core", true),
                vec![],
                Native,
                Nic,
            ),
            (
                XdpRequest::Auto,
                dev("virtio_net", true),
                vec![card()],
                Native,
                Nic,
            ),
            (
                XdpRequest::Auto,
                card(),
                vec![dev("veth", false)],
                Generic,
                SoftwareSibling,
            ),
            (
                XdpRequest::Auto,
                card(),
                vec![card(), None],
                Generic,
                SoftwareSibling,
            ),
            (
                XdpRequest::Auto,
                dev("veth", false),
                vec![card()],
                Generic,
                Veth,
            ),
            (
                XdpRequest::Auto,
                dev("vxlan", false),
                vec![],
                Generic,
                Virtual,
            ),
            (
                XdpRequest::Auto,
                dev("bridge", false),
                vec![],
                Generic,
                Virtual,
            ),
            (XdpRequest::Auto, None, vec![], Generic, Virtual),
            (
                XdpRequest::Native,
                dev("veth", false),
                vec![],
                Native,
                Requested,
            ),
            (
                XdpRequest::Native,
                None,
                vec![dev("veth", false)],
                Native,
                Requested,
            ),
            (XdpRequest::Generic, card(), vec![], Generic, Requested),
            (XdpRequest::Off, card(), vec![], Off, Requested),
        ];
        for (req, dev, siblings, plan, reason) in cases {
            let got = choose(req, dev.as_ref(), &siblings);
            assert_eq!(got, (plan, reason), "{req:?} {dev:?} beside {siblings:?}");
        }
    }

    #[test]
    fn reasons_round_trip_through_their_codes() {
        for r in XdpReason::ALL {
            assert_eq!(XdpReason::from_code(r as u8), Some(r));
        }
        assert_eq!(XdpReason::from_code(200), None);
    }

    #[test]
    fn loopback_is_not_a_network_card() {
        // Every namespace has lo; ethtool reports no bus for it (or no driver information).
        let lo = device("lo");
        assert!(!lo.is_some_and(|d| d.has_bus));
        assert_eq!(device("no-such-link0"), None);
    }
}
