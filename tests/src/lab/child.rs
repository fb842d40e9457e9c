//! Child processes: background processes with a kill-on-drop guard, and synchronous commands with
//! a timeout.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::{lock, nsexec, poll_until, sanitize_label, LabInner};

/// Pids of a lab's live (not yet reaped) background children, each the leader of its own process
/// group. Reaping happens under this lock, so a pid found here cannot have been reused.
#[derive(Default)]
pub(crate) struct Children {
    pids: Mutex<HashMap<u32, String>>,
}

impl Children {
    /// SIGKILLs every registered child and its process group (they are reaped by their guards).
    pub(crate) fn kill_all(&self) {
        let pids = lock(&self.pids);
        for &pid in pids.keys() {
            kill_group(pid);
        }
    }
}

fn kill_group(pid: u32) {
    // SAFETY: plain signal sends to a child we have not reaped (so the pid is still ours).
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

type Job = (Command, mpsc::Sender<io::Result<Child>>);

/// A thread that lives as long as the lab and forks its background children. Children get
/// PR_SET_PDEATHSIG, which fires when the *thread* that forked them exits; forking from this
/// thread (not from short-lived test or `in_netns` threads) makes that mean "when the lab is
/// cleaned up, or the test process dies".
pub(crate) struct Spawner {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Spawner {
    pub(crate) fn start(prefix: &str) -> Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("{prefix}-spawner"))
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .context("starting spawner thread")?;
        Ok(Spawner {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn spawn(&self, cmd: Command) -> Result<Child> {
        let (reply_tx, reply_rx) = mpsc::channel();
        {
            let tx = lock(&self.tx);
            let tx = tx
                .as_ref()
                .ok_or_else(|| anyhow!("lab already cleaned up"))?;
            tx.send((cmd, reply_tx))
                .map_err(|_| anyhow!("spawner thread is gone"))?;
        }
        let child = reply_rx
            .recv()
            .map_err(|_| anyhow!("spawner thread is gone"))??;
        Ok(child)
    }

    /// Ends the thread (children still alive get their SIGKILL from PDEATHSIG).
    pub(crate) fn stop(&self) {
        lock(&self.tx).take();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// A background process inside a lab namespace. Dropping it SIGKILLs the process and its process
/// group and reaps it. If the test is panicking, the tails of its stdout/stderr are printed.
pub struct ChildGuard {
    child: Option<Child>,
    pid: u32,
    label: String,
    netns: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    lab: Arc<LabInner>,
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("label", &self.label)
            .field("pid", &self.pid)
            .field("netns", &self.netns)
            .finish()
    }
}

impl ChildGuard {
    pub(crate) fn spawn(
        lab: &Arc<LabInner>,
        netns: &str,
        label: &str,
        mut cmd: Command,
    ) -> Result<ChildGuard> {
        let base = format!(
            "{}-{}-{}",
            lab.next_log_seq(),
            sanitize_label(netns),
            sanitize_label(label)
        );
        let stdout_path = lab.log_dir.join(format!("{base}.out"));
        let stderr_path = lab.log_dir.join(format!("{base}.err"));
        let out = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let err = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        cmd.process_group(0);
        nsexec::die_with_parent_on_exec(&mut cmd);
        let desc = super::describe(&cmd, Some(netns));
        // Registered under the lock the lab's cleanup takes, so it cannot miss this child.
        let mut pids = lock(&lab.children.pids);
        let child = lab
            .spawner
            .spawn(cmd)
            .with_context(|| format!("spawning `{desc}`"))?;
        let pid = child.id();
        pids.insert(pid, label.to_string());
        drop(pids);
        Ok(ChildGuard {
            child: Some(child),
            pid,
            label: label.to_string(),
            netns: netns.to_string(),
            stdout_path,
            stderr_path,
            lab: lab.clone(),
        })
    }

    /// Process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The label given at spawn time.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Everything the process wrote to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the process wrote to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Paths of the stdout and stderr files.
    pub fn log_paths(&self) -> (&Path, &Path) {
        (&self.stdout_path, &self.stderr_path)
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let mut pids = lock(&self.lab.children.pids);
        let Some(child) = self.child.as_mut() else {
            return Err(anyhow!("{} already reaped", self.label));
        };
        let status = child.try_wait().context("waitpid")?;
        if status.is_some() {
            pids.remove(&self.pid);
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let mut err = None;
        let status = poll_until(timeout, || match self.try_wait() {
            Ok(s) => s,
            Err(e) => {
                err = Some(e);
                Some(ExitStatus::default())
            }
        });
        match err {
            Some(e) => Err(e),
            None => Ok(status),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process (not its group).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let _pids = lock(&self.lab.children.pids);
        if self.child.is_none() {
            return Err(anyhow!("{} already reaped", self.label));
        }
        // SAFETY: signal to our unreaped child.
        if unsafe { libc::kill(self.pid as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL the group; returns the exit status.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill_and_reap()
    }

    /// SIGKILL the process and its group, reap it and return its exit status.
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.kill_and_reap()
    }

    fn kill_and_reap(&mut self) -> Result<ExitStatus> {
        let mut pids = lock(&self.lab.children.pids);
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} already reaped", self.label))?;
        kill_group(self.pid);
        let status = child.wait();
        pids.remove(&self.pid);
        status.context("waitpid")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let status = self.kill_and_reap();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}, netns {}) {} ---",
                self.label,
                self.pid,
                self.netns,
                match &status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("{e:#}"),
                }
            );
            for (what, path) in [("stdout", &self.stdout_path), ("stderr", &self.stderr_path)] {
                let tail = read_tail(path, 4096);
                if !tail.trim().is_empty() {
                    eprintln!("[{what}]\n{}", tail.trim_end());
                }
            }
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max {
        let _ = f.seek(SeekFrom::Start(len - max));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs `cmd` to completion with stdout/stderr captured. On timeout the process is SIGKILLed
/// (through a pidfd, so never a reused pid) and the output so far returned with `true`.
/// Runs on the caller's thread, which outlives the command, so PDEATHSIG is safe to use.
pub(crate) fn output_with_timeout(
    mut cmd: Command,
    timeout: Duration,
) -> io::Result<(Output, bool)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    nsexec::die_with_parent_on_exec(&mut cmd);
    let child = cmd.spawn()?;
    let pid = child.id();
    let pidfd = pidfd_open(pid);
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(res) => {
            let _ = waiter.join();
            Ok((res?, false))
        }
        Err(_) => {
            match &pidfd {
                Some(fd) => pidfd_kill(fd),
                // Old kernel without pidfds: the waiter cannot have reaped it yet unless it just
                // exited, a tiny window we accept there.
                None => unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                },
            }
            // Output pipes may be held open by grandchildren; don't wait forever for them.
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(res) => {
                    let _ = waiter.join();
                    Ok((res?, true))
                }
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out, killed, and its output pipes stayed open (background children?)",
                )),
            }
        }
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor we own.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal on our pidfd; no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}
