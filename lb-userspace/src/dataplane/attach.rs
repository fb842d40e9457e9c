//! Attaching programs so that attachments survive the agent, and a restarted agent swaps its
//! freshly loaded programs in without a gap:
//! - XDP and tcx (Linux 6.6+) attach through bpf links pinned at `PIN/links/<ifindex>-<hook>`;
//!   a restart updates the pinned link in place (bpf_link_update, atomic).
//! - Kernels without tcx get a netlink cls_bpf filter on the clsact qdisc instead, at a priority
//!   and handle owned by lb ([`TC_NETLINK_PRIORITY`], [`TcHook::netlink_handle`]); a restart
//!   changes that filter's program in place (netlink filter change, atomic), and the program
//!   pinned at `PIN/links/<ifindex>-<hook>-nl` records which interfaces have such a filter so
//!   that detach and cleanup remove exactly lb's filters.
//! - Tracepoints and cgroup socket hooks attach through links pinned at `PIN/links/tp-<event>`
//!   and `PIN/links/cgroup-<hook>`, replaced by renaming a new pin over the old one.
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType, TcError, TcHandle,
        },
        xdp::XdpLink,
        CgroupAttachMode, CgroupSockAddr, Link as _, LinkOrder, ProgramError, SchedClassifier,
        TracePoint, Xdp, XdpMode,
    },
    sys::SyscallError,
};

use super::{
    pins::PinLayout,
    xdp_mode::{XdpModeUsed, XdpPlan, XdpReason},
};

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcMode {
    /// tcx where the kernel has it (Linux 6.6+), else a netlink filter (logged once).
    #[default]
    Auto,
    /// tcx links only; attaching fails on kernels without tcx.
    Tcx,
    /// A cls_bpf filter on the clsact qdisc, managed over netlink (any kernel lb supports).
    Netlink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    /// Ingress of an external interface (lb_tc_ext with `--xdp-mode off`, lb_tc_handoff beside
    /// XDP) or of a tunnel (lb_tc_ext).
    Ext,
    /// Ingress of a pod interface.
    Pod,
    /// Egress of an external or pod interface: replies the node itself sent as an endpoint.
    Egress,
}

/// Priority ("pref" in `tc filter show`) of lb's netlink TC filters; with
/// [`TcHook::netlink_handle`] it identifies them, so lb replaces and deletes only its own.
pub const TC_NETLINK_PRIORITY: u16 = 0x4c42;

impl TcHook {
    pub const ALL: [TcHook; 3] = [TcHook::Ext, TcHook::Pod, TcHook::Egress];

    fn pin_name(self) -> &'static str {
        match self {
            TcHook::Ext => "tc-ext",
            TcHook::Pod => "tc-pod",
            TcHook::Egress => "tc-egress",
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            TcHook::Ext | TcHook::Pod => TcAttachType::Ingress,
            TcHook::Egress => TcAttachType::Egress,
        }
    }

    fn netlink_pin_name(self) -> String {
        format!("{}-nl", self.pin_name())
    }

    /// Where a new netlink record is pinned before it is renamed over the old one (bpffs
    /// refuses names with dots).
    fn netlink_tmp_pin_name(self) -> String {
        format!("{}-nl-new", self.pin_name())
    }

    /// Handle of lb's netlink TC filter for this hook (at [`TC_NETLINK_PRIORITY`]).
    pub fn netlink_handle(self) -> u32 {
        match self {
            TcHook::Ext => 0x4c42_0001,
            TcHook::Pod => 0x4c42_0002,
            TcHook::Egress => 0x4c42_0003,
        }
    }
}

const XDP_PIN: &str = "xdp";

pub struct Links {
    layout: PinLayout,
    pub(super) mode: TcMode,
    /// Found out (in Auto mode) that the kernel has no tcx: attach over netlink straight away.
    tcx_missing: bool,
}

pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("interface {iface}: {}", std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The name of the interface with this index in the current network namespace, if there is one.
fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Open a pinned link if one is there and still usable.
fn pinned(path: &Path) -> Option<FdLink> {
    path.exists()
        .then(|| PinnedLink::from_pin(path).ok().map(FdLink::from))
        .flatten()
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Leave a netlink filter attached when its link object goes away. aya's SchedClassifierLink
/// deletes the filter on drop (and a program deletes the links it still holds when it is
/// dropped, hence take_link first); lb's filters must outlive the agent. A netlink link is
/// plain data (interface index, priority, handle): forgetting it leaks nothing.
fn keep_attached(link: SchedClassifierLink) {
    std::mem::forget(link);
}

/// The errno behind a netlink TC operation's error.
/// Attach an XDP link, waiting out one whose pin was just removed: the kernel releases a link
/// from a work queue when its last reference goes, and until then a new XDP link on the
/// interface fails with EEXIST (seen switching modes on a loaded machine). Bounded: after 2 s
/// the error is the caller's.
fn attach_xdp_link(
    prog: &mut Xdp,
    ifindex: u32,
    mode: XdpMode,
) -> Result<aya::programs::xdp::XdpLinkId, ProgramError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match prog.attach_to_if_index(ifindex, mode) {
            Err(e)
                if netlink_errno(&e) == Some(libc::EEXIST)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done => return done,
        }
    }
}

fn netlink_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(e)) | ProgramError::NetlinkError(e) => {
            e.raw_os_error()
        }
        ProgramError::TcError(TcError::IoError(e)) | ProgramError::IOError(e) => e.raw_os_error(),
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

/// The kernel's ENOTSUPP (not in libc: it never reaches userspace by design, but does).
const ENOTSUPP: i32 = 524;

/// Whether the kernel has tcx: BPF_PROG_QUERY for a tcx attach type succeeds on 6.6+ and fails
/// with EINVAL (an unknown attach type) before.
fn tcx_available(iface: &str) -> Result<bool, ProgramError> {
    match SchedClassifier::query_tcx(iface, TcAttachType::Ingress) {
        Ok(_) => Ok(true),
        Err(e) if is_unsupported(netlink_errno(&e)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_unsupported(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::ENOSYS)
    )
}

/// Put `prog` into lb's netlink filter for `hook` on `iface`: change the program of the filter
/// that is there (true), or create the filter (false). Either way the filter is left attached
/// when `prog` or the process goes away.
fn netlink_replace_or_create(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcHook,
) -> Result<bool> {
    let handle = TcHandle::from(hook.netlink_handle());
    // Replace first (the restart case), create when there is nothing to replace (ENOENT); a
    // filter created in between by someone else (EEXIST) is replaced on the second round.
    for _ in 0..2 {
        let existing = SchedClassifierLink::attached(
            iface,
            hook.attach_type(),
            TC_NETLINK_PRIORITY,
            handle,
            None,
        )
        .with_context(|| format!("{iface}: resolving the interface"))?;
        // Without NLM_F_CREATE (what aya sends when attaching to an existing link) the kernel
        // changes the existing filter's program atomically, or fails with ENOENT.
        match prog.attach_to_link(existing) {
            Ok(id) => {
                keep_attached(prog.take_link(id)?);
                return Ok(true);
            }
            Err(e) if netlink_errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "{iface}: replacing the TC filter at priority {TC_NETLINK_PRIORITY} \
                         handle {:#x}",
                        hook.netlink_handle()
                    )
                });
            }
        }
        let opts = NlOptions {
            priority: TC_NETLINK_PRIORITY,
            handle,
            classid: None,
        };
        // NLM_F_CREATE | NLM_F_EXCL: fails with EEXIST rather than touching another filter.
        match prog.attach_with_options(iface, hook.attach_type(), TcAttachOptions::Netlink(opts)) {
            Ok(id) => {
                keep_attached(prog.take_link(id)?);
                return Ok(false);
            }
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "{iface}: attaching a TC {:?} filter over netlink",
                        hook.attach_type()
                    )
                });
            }
        }
    }
    bail!("{iface}: lb's TC filter keeps appearing and disappearing; is another agent attaching to this interface?")
}

/// Delete lb's netlink filter for `hook` on the interface with this index, if lb recorded one,
/// and the record. The interface (and with it the filter) may be gone already.
pub(super) fn detach_netlink(layout: &PinLayout, ifindex: u32, hook: TcHook) -> Result<()> {
    let marker = layout.link(ifindex, &hook.netlink_pin_name());
    let tmp = layout.link(ifindex, &hook.netlink_tmp_pin_name());
    if !marker.exists() && !tmp.exists() {
        return Ok(());
    }
    if let Some(iface) = ifname(ifindex) {
        let link = SchedClassifierLink::attached(
            &iface,
            hook.attach_type(),
            TC_NETLINK_PRIORITY,
            TcHandle::from(hook.netlink_handle()),
            None,
        );
        match link.map_err(ProgramError::from).and_then(|l| l.detach()) {
            Ok(()) => tracing::debug!("{iface}: removed lb's TC {} filter", hook.pin_name()),
            // No filter there (ENOENT), no clsact qdisc (EINVAL), no interface (ENODEV).
            Err(e)
                if matches!(
                    netlink_errno(&e),
                    Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
                ) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "{iface}: deleting the TC filter at priority {TC_NETLINK_PRIORITY} \
                         handle {:#x}",
                        hook.netlink_handle()
                    )
                });
            }
        }
    }
    remove_if_exists(&marker)?;
    remove_if_exists(&tmp)
}

/// [`detach_netlink`] for every netlink filter recorded under the pin path (cleanup). Tries
/// them all; a failed one keeps its record, so a retry finds it.
pub(super) fn detach_all_netlink(layout: &PinLayout) -> Result<()> {
    let mut first_err = None;
    for (ifindex, hook) in netlink_records(layout) {
        if let Err(e) = detach_netlink(layout, ifindex, hook) {
            tracing::warn!("{e:#}");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The (ifindex, hook) pairs with a netlink record under `PIN/links`.
fn netlink_records(layout: &PinLayout) -> Vec<(u32, TcHook)> {
    let mut all: Vec<(u32, TcHook)> = std::fs::read_dir(layout.links_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| parse_netlink_record(e.ok()?.file_name().to_str()?))
        .collect();
    all.sort_unstable_by_key(|&(i, h)| (i, h as u8));
    all.dedup();
    all
}

fn parse_netlink_record(name: &str) -> Option<(u32, TcHook)> {
    let (ifindex, rest) = name.split_once('-')?;
    let rest = rest.strip_suffix("-new").unwrap_or(rest);
    let hook = TcHook::ALL
        .into_iter()
        .find(|h| h.netlink_pin_name() == rest)?;
    Some((ifindex.parse().ok()?, hook))
}

impl Links {
    pub fn new(layout: PinLayout) -> Self {
        Links {
            layout,
            mode: TcMode::default(),
            tcx_missing: false,
        }
    }

    /// Attach the XDP program as `plan` says (native falls back to generic where the driver
    /// refuses). A link a previous agent pinned gets the new program in place (atomic) when it
    /// runs in the mode wanted (`pinned`, as recorded); in another mode, or unknown, it is
    /// replaced: the kernel allows only one of native and generic at a time, so this leaves the
    /// interface without XDP for the moment between the two (the first start after upgrading
    /// to `--xdp-mode auto`, or after changing the flag).
    pub fn attach_xdp(
        &mut self,
        prog: &mut Xdp,
        iface: &str,
        ifindex: u32,
        plan: XdpPlan,
        pinned_as: Option<(XdpModeUsed, XdpReason)>,
    ) -> Result<XdpModeUsed> {
        let path = self.layout.link(ifindex, XDP_PIN);
        if let Some(link) = pinned(&path) {
            let pinned_mode = pinned_as.map(|p| p.0);
            let keeps = pinned_as.is_some_and(|(m, why)| plan_allows(plan, m, why));
            match XdpLink::try_from(link)
                .map_err(anyhow::Error::from)
                .and_then(|l| match keeps {
                    true => prog.attach_to_link(l).map_err(anyhow::Error::from),
                    false => bail!("it runs in {pinned_mode:?} mode, {plan:?} is wanted"),
                }) {
                Ok(_) => return Ok(pinned_mode.expect("checked above")),
                // The interface behind it went away (or was recreated), or the mode changes.
                Err(e) => {
                    tracing::info!("{iface}: replacing the pinned XDP link ({e:#})");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        let (id, used) = match plan {
            XdpPlan::Native => match attach_xdp_link(prog, ifindex, XdpMode::Driver) {
                Ok(id) => (id, XdpModeUsed::Native),
                Err(e) => {
                    tracing::warn!(
                        "{iface}: native XDP unavailable ({e}), falling back to generic"
                    );
                    (
                        attach_xdp_link(prog, ifindex, XdpMode::Skb)?,
                        XdpModeUsed::Generic,
                    )
                }
            },
            XdpPlan::Generic | XdpPlan::Off => (
                attach_xdp_link(prog, ifindex, XdpMode::Skb)?,
                XdpModeUsed::Generic,
            ),
        };
        let link = FdLink::try_from(prog.take_link(id)?)?;
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(used)
    }

    /// Attach a tracepoint program through a link pinned at `PIN/links/tp-<event>`; a link
    /// already pinned there (a previous agent's: tracepoint links cannot be updated in place) is
    /// replaced by renaming the new pin over it, so the event is never without a program.
    pub fn attach_tracepoint(
        &mut self,
        prog: &mut TracePoint,
        category: &str,
        event: &str,
    ) -> Result<()> {
        let id = prog
            .attach(category, event)
            .with_context(|| format!("attaching to {category}:{event}"))?;
        let link = FdLink::try_from(prog.take_link(id)?)?;
        self.pin_over(link, &format!("tp-{event}"))
    }

    /// Pin `link` as `PIN/links/NAME`, replacing what is pinned there (whose program, if that
    /// was the last reference, is detached then): pinned beside it first, then renamed over it.
    fn pin_over(&self, link: FdLink, name: &str) -> Result<()> {
        let path = self.layout.links_dir().join(name);
        let tmp = self.layout.links_dir().join(format!("{name}-new"));
        remove_if_exists(&tmp)?;
        link.pin(&tmp)
            .with_context(|| format!("pinning {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// Attach a cgroup socket hook to `cgroup` beside whatever else runs there, pinned as
    /// `links/cgroup-HOOK` (bpffs refuses dots in names). A previous agent's link is replaced
    /// only once the new one is attached: no connect() goes untranslated in between.
    pub fn attach_cgroup(
        &mut self,
        prog: &mut CgroupSockAddr,
        hook: &str,
        cgroup: &std::fs::File,
    ) -> Result<()> {
        // Through bpf_link_create, whose cgroup links always run beside the cgroup's other
        // programs; the kernel refuses any flag there, BPF_F_ALLOW_MULTI included (aya's
        // `Single` passes none).
        let id = prog
            .attach(cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching the {hook} hook"))?;
        let link = FdLink::try_from(prog.take_link(id)?)?;
        self.pin_over(link, &format!("cgroup-{hook}"))
    }

    /// Detach a cgroup socket hook (`--socket-lb off`), if attached.
    pub fn detach_cgroup(&mut self, hook: &str) -> Result<()> {
        remove_if_exists(&self.layout.links_dir().join(format!("cgroup-{hook}")))
    }

    /// Attach a TC ingress program in the configured [`TcMode`]; returns the mode used.
    pub fn attach_tc(
        &mut self,
        prog: &mut SchedClassifier,
        iface: &str,
        ifindex: u32,
        hook: TcHook,
    ) -> Result<TcMode> {
        let mode = match self.mode {
            TcMode::Auto if self.tcx_missing => TcMode::Netlink,
            mode => mode,
        };
        match mode {
            TcMode::Netlink => self.attach_netlink(prog, iface, ifindex, hook)?,
            TcMode::Tcx => self.attach_tcx(prog, iface, ifindex, hook)?,
            TcMode::Auto => match self.attach_tcx(prog, iface, ifindex, hook) {
                Ok(()) => {}
                Err(e) => match tcx_available(iface) {
                    Ok(false) => {
                        tracing::warn!(
                            "{iface}: this kernel has no tcx (Linux 6.6+; attaching failed: \
                             {e:#}), falling back to a netlink TC filter on clsact"
                        );
                        self.tcx_missing = true;
                        self.attach_netlink(prog, iface, ifindex, hook)?;
                        return Ok(TcMode::Netlink);
                    }
                    _ => return Err(e),
                },
            },
        }
        Ok(mode)
    }

    /// tcx: a bpf link pinned at `PIN/links/<ifindex>-tc-<hook>`, updated in place on restart.
    fn attach_tcx(
        &mut self,
        prog: &mut SchedClassifier,
        iface: &str,
        ifindex: u32,
        hook: TcHook,
    ) -> Result<()> {
        let path = self.layout.link(ifindex, hook.pin_name());
        let mut done = false;
        if let Some(link) = pinned(&path) {
            match SchedClassifierLink::try_from(link)
                .map_err(anyhow::Error::from)
                .and_then(|l| prog.attach_to_link(l).map_err(anyhow::Error::from))
            {
                Ok(_) => done = true,
                Err(e) => {
                    tracing::info!("{iface}: stale TC link pin ({e:#}), attaching anew");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        if !done {
            // tcx (Linux 6.6+) gives a bpf link that can be pinned and updated in place.
            let id = prog
                .attach_with_options(
                    iface,
                    hook.attach_type(),
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .with_context(|| {
                    format!("{iface}: attaching TC {:?} with tcx", hook.attach_type())
                })?;
            let link = FdLink::try_from(prog.take_link(id)?)?;
            link.pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        // A previous agent ran in netlink mode here: the tcx program is in place, so its
        // filter can go (until now both ran; tcx first).
        detach_netlink(&self.layout, ifindex, hook)
    }

    /// Netlink: a cls_bpf filter (direct action) on the clsact qdisc at lb's own priority and
    /// handle, recorded by the program pinned at `PIN/links/<ifindex>-tc-<hook>-nl`. A filter
    /// already there (a previous agent's) gets the new program in place: netlink filter change
    /// without NLM_F_CREATE swaps the program atomically, so nothing is stacked and no packet
    /// sees the interface without a program.
    fn attach_netlink(
        &mut self,
        prog: &mut SchedClassifier,
        iface: &str,
        ifindex: u32,
        hook: TcHook,
    ) -> Result<()> {
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => {}
            Err(TcError::AlreadyAttached) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("{iface}: adding the clsact qdisc"));
            }
        }
        // Record the attachment first (so that a crash right after attaching cannot leave an
        // unrecorded filter behind), pointing the record at the new program: pinned beside and
        // renamed over, so a record is there all along.
        let marker = self.layout.link(ifindex, &hook.netlink_pin_name());
        let had_record = marker.exists();
        let tmp = self.layout.link(ifindex, &hook.netlink_tmp_pin_name());
        remove_if_exists(&tmp)?;
        prog.pin(&tmp)
            .with_context(|| format!("pinning {}", tmp.display()))?;
        std::fs::rename(&tmp, &marker)
            .with_context(|| format!("renaming {} to {}", tmp.display(), marker.display()))?;
        let replaced = match netlink_replace_or_create(prog, iface, hook) {
            Ok(replaced) => replaced,
            Err(e) => {
                if !had_record {
                    let _ = remove_if_exists(&marker);
                }
                return Err(e);
            }
        };
        tracing::debug!(
            "{iface}: TC {} program {} (netlink filter)",
            hook.pin_name(),
            if replaced { "replaced" } else { "attached" }
        );
        // A previous agent ran in tcx mode here: the filter is in place, its link can go.
        remove_if_exists(&self.layout.link(ifindex, hook.pin_name()))
    }

    /// Remove an interface's attachments: unpin its links (the last reference goes, the program
    /// detaches) and delete lb's netlink filters.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        self.detach_xdp(ifindex)?;
        for hook in TcHook::ALL {
            self.detach_tc(ifindex, hook)?;
        }
        Ok(())
    }

    pub fn detach_xdp(&mut self, ifindex: u32) -> Result<()> {
        remove_if_exists(&self.layout.link(ifindex, XDP_PIN))
    }

    pub fn detach_tc(&mut self, ifindex: u32, hook: TcHook) -> Result<()> {
        remove_if_exists(&self.layout.link(ifindex, hook.pin_name()))?;
        detach_netlink(&self.layout, ifindex, hook)
    }

    /// How lb's TC program for `hook` is attached to the interface, by what is pinned.
    pub fn tc_mode_of(&self, ifindex: u32, hook: TcHook) -> Option<TcMode> {
        if self.layout.link(ifindex, hook.pin_name()).exists() {
            Some(TcMode::Tcx)
        } else if self.layout.link(ifindex, &hook.netlink_pin_name()).exists() {
            Some(TcMode::Netlink)
        } else {
            None
        }
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

/// Whether an attachment in mode `m`, made for reason `why`, is what `plan` would make: a
/// native plan accepts the generic fallback of a driver that refused native before (a restart
/// does not try again, which would leave the interface without XDP for a moment each time).
fn plan_allows(plan: XdpPlan, m: XdpModeUsed, why: XdpReason) -> bool {
    match (plan, m) {
        (XdpPlan::Native, XdpModeUsed::Native) | (XdpPlan::Generic, XdpModeUsed::Generic) => true,
        (XdpPlan::Native, XdpModeUsed::Generic) => why == XdpReason::NoNativeXdp,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_records_are_recognised_by_name() {
        assert_eq!(parse_netlink_record("7-tc-pod-nl"), Some((7, TcHook::Pod)));
        assert_eq!(
            parse_netlink_record("12-tc-ext-nl"),
            Some((12, TcHook::Ext))
        );
        assert_eq!(
            parse_netlink_record("12-tc-ext-nl-new"),
            Some((12, TcHook::Ext))
        );
        assert_eq!(
            parse_netlink_record("3-tc-egress-nl"),
            Some((3, TcHook::Egress))
        );
        for other in [
            "7-tc-pod",
            "7-xdp",
            "x-tc-pod-nl",
            "7-tc-pod-nl-old",
            "tc-pod-nl",
        ] {
            assert_eq!(parse_netlink_record(other), None, "{other}");
        }
    }

    #[test]
    fn a_pinned_xdp_link_is_kept_only_in_the_mode_planned() {
        use XdpModeUsed::{Generic, Native};
        use XdpReason::{NoNativeXdp, Requested, Veth};
        let cases = [
            (XdpPlan::Native, Native, Requested, true),
            (XdpPlan::Native, Generic, NoNativeXdp, true),
            (XdpPlan::Native, Generic, Requested, false),
            (XdpPlan::Generic, Generic, Veth, true),
            (XdpPlan::Generic, Native, Requested, false),
            (XdpPlan::Off, Generic, Requested, false),
        ];
        for (plan, m, why, keeps) in cases {
            assert_eq!(plan_allows(plan, m, why), keeps, "{plan:?} {m:?} {why:?}");
        }
    }

    #[test]
    fn lb_owns_distinct_netlink_handles() {
        let mut handles: Vec<u32> = TcHook::ALL.iter().map(|h| h.netlink_handle()).collect();
        handles.dedup();
        assert_eq!(handles.len(), TcHook::ALL.len());
        assert_eq!(TcMode::default(), TcMode::Auto);
    }

    #[test]
    fn missing_tcx_is_recognised_by_errno() {
        assert!(is_unsupported(Some(libc::EINVAL)));
        assert!(is_unsupported(Some(ENOTSUPP)));
        assert!(!is_unsupported(Some(libc::EPERM)));
        assert!(!is_unsupported(None));
    }
}
