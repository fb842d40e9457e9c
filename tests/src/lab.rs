//! Network-namespace lab: build throw-away topologies out of network namespaces and veths, run
//! processes and real TCP/UDP traffic inside them, and remove everything afterwards.
//!
//! ```no_run
//! use std::time::Duration;
//! use lb_tests::lab::{self, Lab};
//!
//! # fn main() -> anyhow::Result<()> {
//! if !lab::require_privileged("my_test") {
//!     return Ok(());
//! }
//! let lab = Lab::new("my_test")?;
//! // In integration tests (tests/tests/*.rs) name the exact binary Cargo built:
//! // lab.set_echo_bin(env!("CARGO_BIN_EXE_lb-echo"));
//! let client = lab.netns("client")?; // really "lbXXXX-client"
//! let server = lab.netns("server")?;
//! lab.veth(&client, "eth0", &server, "eth0")?;
//! client.add_addr("eth0", "198.51.100.2/24")?;
//! server.add_addr("eth0", "198.51.100.3/24")?;
//! let _srv = server.serve_echo("pod-a", 8080, false)?; // killed on drop
//! let reply = client
//!     .request("198.51.100.3:8080".parse()?, false, Duration::from_secs(2))
//!     .unwrap();
//! assert_eq!(reply.name, "pod-a");
//! # Ok(()) }
//! ```
//!
//! Hygiene guarantees (the shared machine stays clean, also when a test fails):
//! - Nothing is ever created or configured in the root network namespace. Every command that
//!   touches links, addresses, routes or sysctls runs inside one of the lab's namespaces.
//! - All namespaces are named `PREFIX-name` with a per-lab prefix `lbXXXX` (6 chars), claimed
//!   atomically in [`REGISTRY_DIR`], so parallel tests and runs never collide.
//! - Dropping the [`Lab`] (also while unwinding from a panic) kills the processes it spawned and
//!   every process still inside its namespaces, deletes the namespaces (which removes the veths and
//!   bridges inside them), removes the pin directories handed out by [`Lab::pin_dir`] and the log
//!   directory. Spawned processes also get `PR_SET_PDEATHSIG=SIGKILL`, so they die with the test
//!   process even when it is SIGKILLed; namespaces left behind by such a killed run are reaped by the
//!   next [`Lab::new`] on the machine (the owner's pid and start time are recorded).
//!
//! Commands run "inside" a namespace are started like `ip netns exec` does it (setns into the
//! namespace, private mount namespace, fresh /sys for that namespace) but additionally keep the
//! bpffs mounted at /sys/fs/bpf, which `ip netns exec` hides (it remounts /sys). So an `lb-agent`
//! spawned in a namespace can pin under /sys/fs/bpf and an `lbctl` run there can read the pins.

mod cgroup;
mod child;
pub mod echo;
mod nsexec;
mod registry;
mod xdp_pass;

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub use child::ChildGuard;
pub use echo::{EchoConn, Reply, RequestError};
pub use registry::REGISTRY_DIR;

/// Environment variable overriding where [`echo_bin`] finds the `lb-echo` binary.
pub const ECHO_BIN_ENV: &str = "LB_ECHO_BIN";
/// When set to `1`, [`require_privileged`] panics instead of skipping.
pub const REQUIRE_PRIVILEGED_ENV: &str = "LB_REQUIRE_PRIVILEGED";
/// Stretches every wait of [`poll_until`] and [`wait_until`] by this factor (default 1).
/// `cargo xtask vm-test` sets it: there, in an emulated VM, everything runs some 10 times
/// slower (an agent takes 10-20 s to load its programs, not well under 1 s).
pub const TIME_SCALE_ENV: &str = "LB_TEST_TIME_SCALE";
/// The agent's `--cgroup-path` by environment: every process a lab starts has it.
pub const LB_CGROUP_ENV: &str = "LB_CGROUP_PATH";
/// Timeout for one [`Netns::exec`] (and friends); the command is SIGKILLed after it.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Netns::serve_echo`] waits for the server to listen.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
const BPFFS: &str = "/sys/fs/bpf";

/// Privilege gate for tests that need root and a bpffs at /sys/fs/bpf.
///
/// Returns true when both are there. Otherwise prints a loud `SKIPPED (needs root and bpffs): TEST`
/// line to stderr and returns false, or panics when `LB_REQUIRE_PRIVILEGED=1` (CI), so that a skip
/// cannot pass silently. Use: `if !lb_tests::lab::require_privileged("name") { return; }`
pub fn require_privileged(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not running as root".to_string());
    }
    if !is_bpffs(Path::new(BPFFS)) {
        missing.push(format!(
            "{BPFFS} is not a bpffs mount (as root: mount -t bpf bpf {BPFFS})"
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join("; ");
    if std::env::var(REQUIRE_PRIVILEGED_ENV).as_deref() == Ok("1") {
        panic!("{test}: {REQUIRE_PRIVILEGED_ENV}=1 but the test cannot run: {reason}");
    }
    eprintln!("\n**********************************************************************");
    eprintln!("SKIPPED (needs root and bpffs): {test}");
    eprintln!("  reason: {reason}");
    eprintln!("**********************************************************************\n");
    false
}

/// `d` stretched by `$LB_TEST_TIME_SCALE` ([`TIME_SCALE_ENV`]).
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var(TIME_SCALE_ENV)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1);
    d * scale.max(1)
}

/// Whether `path` is a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as u32 == BPF_FS_MAGIC
    }
}

/// Polls `f` until it returns `Some`, for at most `deadline`; panics naming `what` on timeout.
///
/// Polls quickly at first (1 ms) and backs off to 50 ms. The last poll happens at or after the
/// deadline, so a condition that becomes true just in time is still seen.
pub fn wait_until<T>(deadline: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match poll_until(deadline, f) {
        Some(v) => v,
        None => panic!("timed out after {:?} waiting for {what}", scaled(deadline)),
    }
}

/// Sets a loop's stop flag when dropped, also while a failed assertion unwinds: a scoped thread
/// looping until the flag is set would otherwise keep the test's scope waiting forever.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Like [`wait_until`] but returns `None` on timeout instead of panicking.
pub fn poll_until<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = scaled(deadline);
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - elapsed));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Finds the `lb-echo` binary built from this crate.
///
/// Order: `$LB_ECHO_BIN`; then next to the running executable and in its parent directory (unit
/// tests and integration tests run from `target/<profile>/deps/`, binaries live in
/// `target/<profile>/`). Cargo builds `lb-echo` before running this package's tests, so both
/// work under `cargo test -p lb-tests`. The most robust choice in integration tests is still
/// `lab.set_echo_bin(env!("CARGO_BIN_EXE_lb-echo"))`, which names exactly the binary Cargo built
/// for that test; this function is the fallback when nothing was set.
pub fn echo_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(ECHO_BIN_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{ECHO_BIN_ENV}={} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join("lb-echo");
        if cand.is_file() {
            return Ok(cand);
        }
        tried.push(cand);
    }
    bail!(
        "lb-echo binary not found (tried {tried:?}); build it with `cargo build -p lb-tests --bin \
         lb-echo`, set {ECHO_BIN_ENV}, or call Lab::set_echo_bin(env!(\"CARGO_BIN_EXE_lb-echo\"))"
    )
}

/// A set of network namespaces (and the processes, pin directories and logs that go with them),
/// removed again on drop. See the module documentation.
pub struct Lab {
    inner: Arc<LabInner>,
}

pub(crate) struct LabInner {
    prefix: String,
    test: String,
    keep: AtomicBool,
    cleaned: AtomicBool,
    /// Full namespace names, in creation order.
    namespaces: Mutex<Vec<String>>,
    pin_dirs: Mutex<Vec<PathBuf>>,
    log_dir: PathBuf,
    echo_bin: Mutex<Option<PathBuf>>,
    record: registry::Record,
    pub(crate) children: child::Children,
    spawner: child::Spawner,
    log_seq: AtomicU64,
    /// The lab's cgroup (None: the machine has no cgroup v2).
    cgroup: Option<cgroup::LabCgroup>,
}

/// Serializes `ip netns add` within this process: the very first one on a machine sets up the
/// shared /run/netns mount, which is racy between concurrent `ip` invocations.
static NETNS_ADD: Mutex<()> = Mutex::new(());

impl Lab {
    /// Creates an empty lab for `test_name` (used in messages and recorded in the registry).
    ///
    /// Reaps namespaces left behind by dead earlier runs first, then claims a fresh prefix.
    pub fn new(test_name: &str) -> Result<Lab> {
        registry::reap_stale();
        let (prefix, record) = registry::claim(test_name)?;
        let log_dir = std::env::temp_dir().join(format!("lb-lab-{prefix}"));
        if let Err(e) = record.note("dir", &log_dir.to_string_lossy()) {
            record.remove();
            return Err(e).context("writing lab registry record");
        }
        if let Err(e) = std::fs::create_dir_all(&log_dir) {
            record.remove();
            return Err(e).with_context(|| format!("creating {}", log_dir.display()));
        }
        let cgroup = cgroup::path_for(&prefix);
        if let Some(cg) = &cgroup {
            // Recorded before creating, as namespaces are.
            let made = record
                .note("cgroup", &cg.host.to_string_lossy())
                .map_err(anyhow::Error::from)
                .and_then(|()| cgroup::create(cg));
            if let Err(e) = made {
                let _ = std::fs::remove_dir_all(&log_dir);
                record.remove();
                return Err(e);
            }
        }
        let spawner = match child::Spawner::start(&prefix) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&log_dir);
                if let Some(cg) = &cgroup {
                    let _ = cgroup::destroy(&cg.host);
                }
                record.remove();
                return Err(e);
            }
        };
        Ok(Lab {
            inner: Arc::new(LabInner {
                prefix,
                test: test_name.to_string(),
                keep: AtomicBool::new(false),
                cleaned: AtomicBool::new(false),
                namespaces: Mutex::new(Vec::new()),
                pin_dirs: Mutex::new(Vec::new()),
                log_dir,
                echo_bin: Mutex::new(None),
                record,
                children: child::Children::default(),
                spawner,
                log_seq: AtomicU64::new(0),
                cgroup,
            }),
        })
    }

    /// The per-lab prefix, `lb` + 4 hex digits (e.g. `lb3f0a`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The test name given to [`Lab::new`].
    pub fn test_name(&self) -> &str {
        &self.inner.test
    }

    /// `PREFIX-name`: the form every namespace (and pin directory) of this lab is named in.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.inner.prefix)
    }

    /// Where spawned processes' stdout/stderr files go (removed with the lab).
    pub fn log_dir(&self) -> &Path {
        &self.inner.log_dir
    }

    /// Full names of the namespaces created so far.
    pub fn namespaces(&self) -> Vec<String> {
        lock(&self.inner.namespaces).clone()
    }

    /// Don't remove namespaces, pin directories and logs on drop (e.g. for a demo's `--keep`);
    /// prints how to remove them by hand instead. Spawned processes are still killed on drop.
    pub fn keep(&self) {
        self.inner.keep.store(true, Ordering::SeqCst);
    }

    /// The lab's cgroup v2 directory, as the machine sees it (None: no cgroup v2 here). Every
    /// process the lab starts gets `LB_CGROUP_PATH` naming it as its namespace sees it, so an
    /// agent's socket hooks attach there; [`Netns::command_in_cgroup`] puts a process in it.
    pub fn cgroup(&self) -> Option<&Path> {
        self.inner.cgroup.as_ref().map(|c| c.host.as_path())
    }

    /// The lab's cgroup as processes in its namespaces see it (`/sys/fs/cgroup/PREFIX-lab`).
    pub fn cgroup_inside(&self) -> Option<&Path> {
        self.inner.cgroup.as_ref().map(|c| c.inside.as_path())
    }

    /// Sets the `lb-echo` binary used by [`Netns::serve_echo`] (default: [`echo_bin`]).
    pub fn set_echo_bin(&self, path: impl Into<PathBuf>) {
        *lock(&self.inner.echo_bin) = Some(path.into());
    }

    /// The `lb-echo` binary in use.
    pub fn echo_bin(&self) -> Result<PathBuf> {
        self.inner.echo_bin()
    }

    /// Creates namespace `PREFIX-name` with `lo` up and `net.ipv4.icmp_ratelimit=0` (so repeated
    /// "port unreachable" answers, i.e. UDP "refused", are not rate limited).
    pub fn netns(&self, name: &str) -> Result<Netns> {
        self.inner.check_alive()?;
        validate_name(name)?;
        let full = self.name(name);
        {
            let mut list = lock(&self.inner.namespaces);
            if list.contains(&full) {
                bail!("namespace {full} already exists in this lab");
            }
            // Recorded before creating, so a crash in between still gets it reaped.
            self.inner
                .record
                .note("netns", &full)
                .context("writing lab registry record")?;
            list.push(full.clone());
        }
        {
            let _g = lock(&NETNS_ADD);
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "add", &full]);
            run_checked(cmd, &format!("ip netns add {full}"), EXEC_TIMEOUT)?;
        }
        let ns = Netns {
            name: full,
            short: name.to_string(),
            lab: self.inner.clone(),
        };
        ns.set_up("lo")?;
        ns.sysctl("net.ipv4.icmp_ratelimit", "0")?;
        Ok(ns)
    }

    /// Creates a veth pair with end `if_a` in `a` and end `if_b` in `b` (both may be the same
    /// namespace) and sets both ends up. Runs inside `a`, so nothing appears in the root namespace,
    /// not even for a moment.
    pub fn veth(&self, a: &Netns, if_a: &str, b: &Netns, if_b: &str) -> Result<()> {
        self.inner.check_alive()?;
        for ns in [a, b] {
            if !Arc::ptr_eq(&ns.lab, &self.inner) {
                bail!("namespace {} belongs to another lab", ns.name);
            }
        }
        validate_ifname(if_a)?;
        validate_ifname(if_b)?;
        let mut args = vec!["link", "add", if_a, "type", "veth", "peer", "name", if_b];
        if a.name != b.name {
            args.extend(["netns", b.name.as_str()]);
        }
        a.exec("ip", &args)?;
        a.set_up(if_a)?;
        b.set_up(if_b)?;
        Ok(())
    }

    /// Creates bridge `name` in `ns`, enslaves `ports` (interfaces already in `ns`) and sets the
    /// bridge and ports up. STP stays off, so ports forward at once.
    pub fn bridge(&self, ns: &Netns, name: &str, ports: &[&str]) -> Result<()> {
        self.inner.check_alive()?;
        validate_ifname(name)?;
        ns.exec("ip", ["link", "add", name, "type", "bridge"])?;
        for port in ports {
            ns.exec("ip", ["link", "set", port, "master", name])?;
            ns.set_up(port)?;
        }
        ns.set_up(name)
    }

    /// A pin directory for this lab, `/sys/fs/bpf/PREFIX-name` (not created; an agent given it as
    /// `--pin-path` creates it). Removed recursively on drop, after the namespaces are gone.
    pub fn pin_dir(&self, name: &str) -> Result<PathBuf> {
        self.inner.check_alive()?;
        validate_name(name)?;
        let dir = Path::new(BPFFS).join(self.name(name));
        let mut dirs = lock(&self.inner.pin_dirs);
        if !dirs.contains(&dir) {
            self.inner
                .record
                .note("pin", &dir.to_string_lossy())
                .context("writing lab registry record")?;
            dirs.push(dir.clone());
        }
        Ok(dir)
    }

    /// [`Lab::pin_dir`] for test code: panics (naming the problem) instead of returning an error.
    pub fn pin_path(&self, name: &str) -> PathBuf {
        self.pin_dir(name)
            .unwrap_or_else(|e| panic!("lab {}: pin_path({name:?}): {e:#}", self.inner.prefix))
    }

    /// Removes everything now (what drop does). Returns an error listing what could not be
    /// removed; everything removable is removed regardless.
    pub fn cleanup(&self) -> Result<()> {
        self.inner.cleanup()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.inner.cleanup() {
            eprintln!("lb lab {}: cleanup incomplete: {e:#}", self.inner.prefix);
        }
    }
}

impl LabInner {
    fn check_alive(&self) -> Result<()> {
        if self.cleaned.load(Ordering::SeqCst) {
            bail!("lab {} has already been cleaned up", self.prefix);
        }
        Ok(())
    }

    fn echo_bin(&self) -> Result<PathBuf> {
        match &*lock(&self.echo_bin) {
            Some(p) => Ok(p.clone()),
            None => echo_bin(),
        }
    }

    pub(crate) fn next_log_seq(&self) -> u64 {
        self.log_seq.fetch_add(1, Ordering::Relaxed)
    }

    fn cleanup(&self) -> Result<()> {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // Processes first: they may hold namespaces alive and pins open.
        self.children.kill_all();
        self.spawner.stop();
        let namespaces = lock(&self.namespaces).clone();
        let pins = lock(&self.pin_dirs).clone();
        if self.keep.load(Ordering::SeqCst) {
            eprintln!(
                "lb lab {} ({}): keeping namespaces {namespaces:?}, pin dirs {pins:?}, its cgroup, logs in {}",
                self.prefix,
                self.test,
                self.log_dir.display()
            );
            let paths: Vec<String> = pins
                .iter()
                .chain([&self.log_dir])
                .map(|p| p.display().to_string())
                .collect();
            let cgroup = self
                .cgroup
                .as_ref()
                .map(|c| format!("; rmdir {}", c.host.display()))
                .unwrap_or_default();
            eprintln!(
                "  remove with: for n in {}; do ip netns del $n; done; rm -rf {}{cgroup}",
                namespaces.join(" "),
                paths.join(" ")
            );
            // Not recorded any more, so no later run reaps what the user asked to keep.
            self.record.remove();
            return Ok(());
        }
        let cgroups: Vec<PathBuf> = self.cgroup.iter().map(|c| c.host.clone()).collect();
        let failures = registry::destroy(
            &namespaces,
            &cgroups,
            &pins,
            std::slice::from_ref(&self.log_dir),
        );
        if failures.is_empty() {
            self.record.remove();
            Ok(())
        } else {
            // The record stays, so a later run reaps what is left once this process is gone.
            Err(anyhow!(failures.join("; ")))
        }
    }
}

/// A namespace of a [`Lab`]; a cheap handle (clone freely). The namespace itself lives until the
/// lab is dropped.
#[derive(Clone)]
pub struct Netns {
    name: String,
    short: String,
    lab: Arc<LabInner>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Netns").field(&self.name).finish()
    }
}

impl Netns {
    /// Full name, `PREFIX-name` (what `ip netns list` shows, usable with `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name given to [`Lab::netns`].
    pub fn short_name(&self) -> &str {
        &self.short
    }

    /// `/run/netns/PREFIX-name`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A `Command` that runs `program` inside this namespace (setns, private mount namespace,
    /// fresh /sys, bpffs kept at /sys/fs/bpf). Spawn it yourself, or hand it to
    /// [`Netns::spawn_command`] to get a [`ChildGuard`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let cgroup = self.lab.cgroup.as_ref();
        nsexec::enter_netns_on_exec(&mut cmd, &self.path(), cgroup.map(|c| c.root.as_path()));
        if let Some(cg) = cgroup {
            cmd.env(LB_CGROUP_ENV, &cg.inside);
        }
        cmd
    }

    /// Like [`Netns::command`], and the process runs in the lab's cgroup, where the lab's agents
    /// attach their socket hooks: its connections get Services at connect() time.
    pub fn command_in_cgroup(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let cg = self
            .lab
            .cgroup
            .as_ref()
            .ok_or_else(|| anyhow!("this machine has no cgroup v2: no lab cgroup"))?;
        let mut cmd = self.command(program);
        nsexec::join_cgroup_on_exec(&mut cmd, &cg.inside.join("cgroup.procs"));
        Ok(cmd)
    }

    /// Runs `program args...` inside the namespace and waits (at most [`EXEC_TIMEOUT`]). Fails
    /// with the command line, the exit status, stderr and stdout unless it exits 0.
    pub fn exec<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (cmd, desc) = self.prepare(program.as_ref(), args);
        run_checked(cmd, &desc, EXEC_TIMEOUT)
    }

    /// Like [`Netns::exec`] but returns the output whatever the exit status (errors only when the
    /// command cannot be started or times out).
    pub fn exec_unchecked<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (cmd, desc) = self.prepare(program.as_ref(), args);
        let (out, timed_out) = child::output_with_timeout(cmd, EXEC_TIMEOUT)
            .with_context(|| format!("running `{desc}`"))?;
        if timed_out {
            bail!("`{desc}` timed out after {EXEC_TIMEOUT:?}");
        }
        Ok(out)
    }

    /// Like [`Netns::exec_unchecked`], with the process in the lab's cgroup
    /// ([`Netns::command_in_cgroup`]): where the lab's agents' socket hooks act.
    pub fn exec_in_cgroup<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command_in_cgroup(program)?;
        cmd.args(args);
        let desc = describe(&cmd, Some(&self.name));
        let (out, timed_out) = child::output_with_timeout(cmd, EXEC_TIMEOUT)
            .with_context(|| format!("running `{desc}`"))?;
        if timed_out {
            bail!("`{desc}` timed out after {EXEC_TIMEOUT:?}");
        }
        Ok(out)
    }

    /// Runs a whitespace-separated command line (no quoting, no shell) inside the namespace and
    /// returns its stdout; e.g. `ns.run("ip route add 10.96.0.0/12 dev eth0")`.
    pub fn run(&self, cmdline: &str) -> Result<String> {
        let mut words = cmdline.split_whitespace();
        let program = words.next().ok_or_else(|| anyhow!("empty command line"))?;
        let out = self.exec(program, words)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `sh -c script` inside the namespace and returns its stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.exec("sh", ["-c", script])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip ARGS` inside the namespace (whitespace-separated), returning stdout.
    pub fn ip(&self, args: &str) -> Result<String> {
        self.run(&format!("ip {args}"))
    }

    /// Starts `program args...` in the background inside the namespace. stdout and stderr go to
    /// files in the lab's log directory (see [`ChildGuard::stdout`]). Killed (with its process
    /// group) and reaped when the guard or the lab is dropped.
    pub fn spawn<I, S>(
        &self,
        label: &str,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        self.spawn_command(label, cmd)
    }

    /// Starts a prepared command (normally from [`Netns::command`], with args/env added) in the
    /// background; see [`Netns::spawn`]. Its stdin/stdout/stderr settings are replaced.
    pub fn spawn_command(&self, label: &str, cmd: Command) -> Result<ChildGuard> {
        self.lab.check_alive()?;
        ChildGuard::spawn(&self.lab, &self.name, label, cmd)
    }

    /// `ip addr add CIDR dev IFACE` (IPv6 addresses get `nodad`, so they are usable at once).
    pub fn add_addr(&self, iface: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", iface];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.exec("ip", &args).map(drop)
    }

    /// `ip route add DEST via VIA` (DEST may be `default`).
    pub fn add_route(&self, dest: &str, via: &str) -> Result<()> {
        self.exec("ip", ["route", "add", dest, "via", via])
            .map(drop)
    }

    /// `ip route add DEST dev DEV`.
    pub fn add_route_dev(&self, dest: &str, dev: &str) -> Result<()> {
        self.exec("ip", ["route", "add", dest, "dev", dev])
            .map(drop)
    }

    /// `ip link set IFACE up`.
    pub fn set_up(&self, iface: &str) -> Result<()> {
        self.exec("ip", ["link", "set", iface, "up"]).map(drop)
    }

    /// `sysctl -w KEY=VAL` inside the namespace (for per-namespace keys such as net.ipv4.*).
    pub fn sysctl(&self, key: &str, val: &str) -> Result<()> {
        self.exec("sysctl", ["-q", "-w", &format!("{key}={val}")])
            .map(drop)
    }

    /// Interface index of `iface` in this namespace.
    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let c = CString::new(iface).context("interface name")?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let idx = self.in_netns(move || unsafe { libc::if_nametoindex(c.as_ptr()) })?;
        if idx == 0 {
            bail!("no interface {iface} in netns {}", self.name);
        }
        Ok(idx)
    }

    /// MAC address of `iface`.
    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        validate_ifname(iface)?;
        let text = self.exec("cat", [format!("/sys/class/net/{iface}/address")])?;
        let text = String::from_utf8_lossy(&text.stdout);
        parse_mac(text.trim()).ok_or_else(|| anyhow!("bad MAC address {text:?} for {iface}"))
    }

    /// `ethtool -K IFACE tx off`: without it, XDP on a veth sees CHECKSUM_PARTIAL packets (no
    /// valid L4 checksum) from this sender.
    pub fn tx_offload_off(&self, iface: &str) -> Result<()> {
        self.exec("ethtool", ["-K", iface, "tx", "off"]).map(drop)
    }

    /// Attaches a native XDP program that passes every frame to `iface` (module `xdp_pass`): the
    /// peer of a veth that runs an XDP program under test needs one, or what that program sends
    /// back out (XDP_TX) is not delivered promptly. Detached when the returned link is dropped,
    /// or with the namespace.
    pub fn xdp_pass(&self, iface: &str) -> Result<std::os::fd::OwnedFd> {
        let ifindex = self.ifindex(iface)?;
        self.in_netns(move || xdp_pass::attach(ifindex))?
            .with_context(|| format!("{iface} in netns {}", self.name))
    }

    /// Runs `f` on a fresh thread that has entered this namespace (setns), joins it and returns
    /// the result; the caller's thread is not affected. Sockets created in `f` stay in this
    /// namespace and can be used from any thread afterwards; the same holds for aya attachments.
    /// A panic in `f` is propagated. Processes spawned from `f` with std::process run in the
    /// namespace but with the caller's mounts (prefer [`Netns::exec`]/[`Netns::spawn`]).
    pub fn in_netns<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        let res = std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.short))
                .spawn_scoped(s, move || {
                    // SAFETY: setns on a valid namespace fd; affects only this thread.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    drop(file);
                    Ok(f())
                })
                .context("spawning netns thread")?;
            match handle.join() {
                Ok(r) => r.with_context(|| format!("setns into {}", self.name)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })?;
        Ok(res)
    }

    /// Same as [`Netns::in_netns`].
    pub fn enter<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.in_netns(f)
    }

    /// Starts `lb-echo serve --name NAME --port PORT [--udp]` (listening on 0.0.0.0) in this
    /// namespace and waits until it listens.
    pub fn serve_echo(&self, name: &str, port: u16, udp: bool) -> Result<ChildGuard> {
        self.serve_echo_on(name, SocketAddr::from(([0, 0, 0, 0], port)), udp)
    }

    /// Like [`Netns::serve_echo`] but listening on `bind`.
    pub fn serve_echo_on(&self, name: &str, bind: SocketAddr, udp: bool) -> Result<ChildGuard> {
        let bin = self.lab.echo_bin()?;
        let mut args = vec![
            "serve".to_string(),
            "--name".into(),
            name.into(),
            "--bind".into(),
            bind.ip().to_string(),
            "--port".into(),
            bind.port().to_string(),
        ];
        if udp {
            args.push("--udp".into());
        }
        let proto = if udp { "udp" } else { "tcp" };
        let mut child = self.spawn(&format!("echo-{name}-{proto}{}", bind.port()), bin, args)?;
        let mut exited = None;
        let ready = poll_until(SERVE_TIMEOUT, || {
            if child.stdout().contains(echo::READY) {
                return Some(true);
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    exited = Some(status);
                    Some(false)
                }
                _ => None,
            }
        });
        match (ready, exited) {
            (Some(true), _) => Ok(child),
            (_, Some(status)) => bail!(
                "lb-echo serve {name} {proto} {bind} in {} exited ({status}): {}",
                self.name,
                child.stderr().trim()
            ),
            _ => bail!(
                "lb-echo serve {name} {proto} {bind} in {} not listening after {SERVE_TIMEOUT:?}; \
                 stderr: {}",
                self.name,
                child.stderr().trim()
            ),
        }
    }

    /// Sends one echo request to `addr` from this namespace (in-process, on a thread in the
    /// namespace) and returns the parsed reply. `timeout` covers connect and reply.
    pub fn request(
        &self,
        addr: SocketAddr,
        udp: bool,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        self.in_netns(|| echo::request(addr, udp, timeout))
            .unwrap_or_else(|e| Err(RequestError::Other(format!("{e:#}"))))
    }

    /// Opens a TCP connection (or connected UDP socket) from this namespace to an echo server
    /// for several requests over the same 5-tuple (conntrack, affinity tests).
    pub fn echo_conn(
        &self,
        addr: SocketAddr,
        udp: bool,
        timeout: Duration,
    ) -> Result<EchoConn, RequestError> {
        self.in_netns(|| EchoConn::connect(addr, udp, timeout))
            .unwrap_or_else(|e| Err(RequestError::Other(format!("{e:#}"))))
    }

    /// Waits until something listens on `port` (TCP, or a bound UDP socket) in this namespace,
    /// polling `ss` (for servers other than lb-echo, e.g. an agent's metrics port).
    pub fn wait_listening(&self, port: u16, udp: bool, deadline: Duration) -> Result<()> {
        let flags = if udp { "-Hlun" } else { "-Hltn" };
        let filter = format!("sport = :{port}");
        let mut last_err = None;
        let found = poll_until(deadline, || {
            match self.exec("ss", [flags, filter.as_str()]) {
                Ok(out) if !out.stdout.iter().all(u8::is_ascii_whitespace) => return Some(()),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
            None
        });
        match (found, last_err) {
            (Some(()), _) => Ok(()),
            (None, Some(e)) => Err(e.context(format!("port {port} never listened"))),
            (None, None) => bail!(
                "nothing listening on {} port {port} in {} after {deadline:?}",
                if udp { "udp" } else { "tcp" },
                self.name
            ),
        }
    }

    fn prepare<I, S>(&self, program: &OsStr, args: I) -> (Command, String)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        let desc = describe(&cmd, Some(&self.name));
        (cmd, desc)
    }
}

/// Runs `cmd`, fails unless it exits 0 within `timeout`.
pub(crate) fn run_checked(cmd: Command, desc: &str, timeout: Duration) -> Result<Output> {
    let (out, timed_out) =
        child::output_with_timeout(cmd, timeout).with_context(|| format!("running `{desc}`"))?;
    if timed_out {
        bail!(
            "`{desc}` timed out after {timeout:?} (killed); stderr: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut msg = format!("`{desc}` failed ({})", out.status);
        if !stderr.trim().is_empty() {
            msg.push_str(&format!("; stderr: {}", stderr.trim()));
        }
        if !stdout.trim().is_empty() {
            msg.push_str(&format!("; stdout: {}", stdout.trim()));
        }
        bail!(msg);
    }
    Ok(out)
}

fn describe(cmd: &Command, netns: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(ns) = netns {
        s.push_str(&format!("[netns {ns}] "));
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Namespace short names: 1..=40 chars of `[A-Za-z0-9_-]`.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        bail!("invalid lab name {name:?}: use 1-40 chars of [A-Za-z0-9_-]");
    }
    Ok(())
}

/// Interface names: 1..=15 bytes (IFNAMSIZ - 1), no '/', whitespace or ':'.
fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !ok {
        bail!("invalid interface name {name:?} (1-15 chars, no '/', ':' or spaces)");
    }
    Ok(())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Locks ignoring poisoning: cleanup must work after a panic elsewhere.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Label for file names: keeps `[A-Za-z0-9_.-]`, maps the rest to `_`.
pub(crate) fn sanitize_label(label: &str) -> String {
    let s: String = label
        .chars()
        .take(60)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "proc".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests;
