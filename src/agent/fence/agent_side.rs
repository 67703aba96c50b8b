//! The agent's side of the fence: the [`Fence`] handle that arms and disarms it, starting the
//! fence process (and forwarding its report to the log), the in-process fallback thread, and
//! the confirmation thread after an immediate kill ([`confirm_down`]).

use std::os::fd::{IntoRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use super::fence_loop::{FenceLoop, KILL_EVERY, KILL_SLOW_AFTER};
use super::{Armed, MESSAGE_LEN, encode};
use crate::agent::clock::boottime_now;
use crate::agent::watchdog::DeviceStatus;
use crate::config::{Watchdog, WatchdogMode};
use crate::ha::WatchdogState;
use tokio::sync::watch;

/// An unchanged armed message is written again after this long: the fence process keeps the
/// watchdog alive on every message, so that it fires only when the agent stops talking (not
/// when renewals fail while the agent works: then the agent's own StopNow and disarm come).
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// The in-process fallback's report (the log never blocks: `crate::logging`).
fn say_tracing(line: &str) {
    if line.starts_with("ERROR") {
        tracing::error!("fence: {line}");
    } else {
        tracing::warn!("fence: {line}");
    }
}

/// Arms and disarms the fence (the agent's side).
#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    /// The nonblocking write end of the fence process's stdin; -1 once it is gone.
    pipe: AtomicI32,
    helper_pid: AtomicI32,
    /// The last message written (deadline ns, ttl ms) and when (boot time ns): a message is
    /// written when it changes, and an armed one again after [`RESEND_AFTER`] (each one is
    /// a watchdog keepalive while the agent lives).
    last_deadline: AtomicU64,
    last_ttl: AtomicU64,
    last_write: AtomicU64,
    fallback: OnceLock<mpsc::Sender<Option<Armed>>>,
    /// The `watchdog` section in force.
    watchdog: Watchdog,
    /// The device's status as the fence process last told it (a thread of ours reads its
    /// stdout; `Closed` until it says otherwise).
    watchdog_status: watch::Receiver<DeviceStatus>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let fd = self.pipe.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: we own this descriptor. Closing it is the fence process's signal that
            // the agent is gone: it kills PostgreSQL if anything is left and exits.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

impl Fence {
    /// Parses `watchdog` (the raw `watchdog` section), refuses a `required` watchdog whose
    /// device cannot be written, and starts the fence process for PostgreSQL in `data_dir`
    /// (or, when it cannot be started, the in-process fallback).
    pub fn spawn(
        data_dir: PathBuf,
        watchdog: Option<&serde_json::Value>,
    ) -> Result<Fence, crate::config::ConfigError> {
        let wd = Watchdog::parse(watchdog)?;
        wd.check_startup()?;
        let (status_tx, watchdog_status) = watch::channel(DeviceStatus::Closed);
        let mut inner = Inner {
            data_dir,
            pipe: AtomicI32::new(-1),
            helper_pid: AtomicI32::new(-1),
            last_deadline: AtomicU64::new(u64::MAX),
            last_ttl: AtomicU64::new(u64::MAX),
            last_write: AtomicU64::new(0),
            fallback: OnceLock::new(),
            watchdog: wd,
            watchdog_status,
        };
        match spawn_helper(&inner.data_dir, &inner.watchdog, status_tx) {
            Ok((pid, fd)) => {
                tracing::info!(pid, "started the fence process");
                inner.helper_pid.store(pid, Ordering::SeqCst);
                inner.pipe.store(fd, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::error!(
                    "cannot start the fence process ({e}): fencing from a thread of the agent instead"
                );
                if inner.watchdog.mode != WatchdogMode::Off {
                    tracing::error!("the watchdog is not used without the fence process");
                }
            }
        }
        inner.watchdog_status.mark_unchanged();
        Ok(Fence {
            inner: Arc::new(inner),
        })
    }

    /// The watchdog as leadership depends on it (see [`WatchdogState`]).
    pub fn watchdog_state(&self) -> WatchdogState {
        let inner = &self.inner;
        if inner.watchdog.mode != WatchdogMode::Required {
            return WatchdogState::Unneeded;
        }
        let device = inner.watchdog.device.display();
        if inner.pipe.load(Ordering::SeqCst) < 0 {
            return WatchdogState::Unusable(format!(
                "{device} is driven by the fence process, which is not running"
            ));
        }
        match *inner.watchdog_status.borrow() {
            DeviceStatus::Active => WatchdogState::Active,
            DeviceStatus::Failed => WatchdogState::Unusable(format!(
                "opening {device} or a keepalive to it failed (the fence process's log line says why)"
            )),
            DeviceStatus::Closed => match inner.watchdog.writable() {
                Ok(()) => WatchdogState::Ready,
                Err(e) => WatchdogState::Unusable(e),
            },
        }
    }

    /// Changes of the watchdog's status, to wake the HA loop.
    pub fn watchdog_changes(&self) -> watch::Receiver<DeviceStatus> {
        self.inner.watchdog_status.clone()
    }

    /// Arms the fence for `armed`, or disarms it with `None` (a kill in progress goes on
    /// until PostgreSQL is down). Never blocks: one nonblocking write(2).
    pub fn set(&self, armed: Option<Armed>) {
        let inner = &self.inner;
        let msg = encode(armed);
        let (ns, ms) = (
            u64::from_le_bytes(msg[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(msg[8..].try_into().expect("8 bytes")),
        );
        let fd = inner.pipe.load(Ordering::SeqCst);
        if fd >= 0 {
            if !inner.helper_alive() {
                inner.helper_gone("the fence process exited");
            } else if inner.last_deadline.load(Ordering::Relaxed) == ns
                && inner.last_ttl.load(Ordering::Relaxed) == ms
                && (ns == 0
                    || boottime_now().as_nanos() as u64
                        <= inner.last_write.load(Ordering::Relaxed)
                            + RESEND_AFTER.as_nanos() as u64)
            {
                return;
            } else {
                // SAFETY: write(2) of a 16-byte buffer to our nonblocking pipe.
                let n = unsafe { libc::write(fd, msg.as_ptr().cast(), MESSAGE_LEN) };
                if n == MESSAGE_LEN as isize {
                    inner.last_deadline.store(ns, Ordering::Relaxed);
                    inner.last_ttl.store(ms, Ordering::Relaxed);
                    inner
                        .last_write
                        .store(boottime_now().as_nanos() as u64, Ordering::Relaxed);
                    return;
                }
                let e = std::io::Error::last_os_error();
                if n < 0 && e.raw_os_error() == Some(libc::EAGAIN) {
                    // a full pipe: the process is alive but behind; the next set retries
                    tracing::warn!("the fence process is not reading its messages");
                    return;
                }
                inner.helper_gone(&format!("writing to the fence process failed: {e}"));
            }
        }
        let tx = inner
            .fallback
            .get_or_init(|| spawn_fallback(inner.data_dir.clone()));
        let _ = tx.send(armed);
    }
}

impl Inner {
    fn helper_alive(&self) -> bool {
        let pid = self.helper_pid.load(Ordering::SeqCst);
        if pid <= 0 {
            return false;
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child, without blocking; it reaps it if it exited.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 }
    }

    fn helper_gone(&self, why: &str) {
        let fd = self.pipe.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: we own this descriptor.
            unsafe {
                libc::close(fd);
            }
        }
        self.helper_pid.store(-1, Ordering::SeqCst);
        tracing::error!("{why}: fencing from a thread of the agent instead");
    }
}

/// After an immediate kill (`Action::StopNow`): a std thread (not a tokio task) repeats the
/// kill every 20 ms until no process of `data_dir` is left (giving up after 60 s with an
/// error), and only then logs.
pub(crate) fn confirm_down(data_dir: PathBuf, killed: usize) {
    let spawned = std::thread::Builder::new()
        .name("pg-stop-now".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let down = crate::postgres::kill_data_dir_processes_confirmed(
                &data_dir,
                KILL_EVERY,
                KILL_SLOW_AFTER,
            );
            if down {
                tracing::warn!(
                    killed,
                    "stopped PostgreSQL immediately: no process of {} left after {:?}",
                    data_dir.display(),
                    started.elapsed()
                );
            } else {
                tracing::error!(
                    "stopping PostgreSQL immediately: processes of {} still alive after {}s of SIGKILL",
                    data_dir.display(),
                    KILL_SLOW_AFTER.as_secs()
                );
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            killed,
            "stopped PostgreSQL immediately (cannot start a thread to confirm it: {e})"
        );
    }
}

/// Starts `pgwarden fence-helper` with a pipe as its stdin; its pid and the pipe's
/// nonblocking write end.
fn spawn_helper(
    data_dir: &Path,
    wd: &Watchdog,
    status: watch::Sender<DeviceStatus>,
) -> std::io::Result<(i32, RawFd)> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    // Its stderr is a pipe of its own, read by a thread of ours into the (non-blocking) log:
    // the fence writes to it only when the pipe has room, so a stuck log never stops it.
    let (log_reader, log_writer) = std::io::pipe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0("pgwarden")
        .arg("fence-helper")
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(std::process::Stdio::piped())
        .stderr(log_writer);
    // With a watchdog, its stdout carries the device's status, one byte at each change.
    let mut status_reader = None;
    cmd.stdout(std::process::Stdio::null());
    if wd.mode != WatchdogMode::Off {
        let (reader, writer) = std::io::pipe()?;
        cmd.stdout(writer);
        status_reader = Some(reader);
        cmd.arg("--watchdog-mode")
            .arg(wd.mode.as_str())
            .arg("--watchdog-device")
            .arg(&wd.device)
            .arg("--watchdog-safety-margin")
            .arg(wd.safety_margin.to_string());
    }
    // SAFETY: only async-signal-safe calls between fork and exec. Its own process group:
    // terminal signals to the agent's group must not take the fence down.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // our copy of the log pipe's write end goes with the command
    drop(cmd);
    forward_log(log_reader);
    if let Some(reader) = status_reader {
        forward_status(reader, status);
    }
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin pipe"))?;
    let pid = child.id() as i32;
    // Dropping a Child neither kills nor waits; Inner::helper_alive reaps it.
    drop(child);
    let fd = stdin.into_raw_fd();
    // SAFETY: fcntl on the descriptor we now own.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        let e = std::io::Error::last_os_error();
        // SAFETY: our descriptor; closing it makes the process exit.
        unsafe {
            libc::close(fd);
        }
        return Err(e);
    }
    Ok((pid, fd))
}

/// Copies the fence process's report lines into the log, until it exits.
fn forward_log(reader: std::io::PipeReader) {
    use std::io::BufRead;
    let spawned = std::thread::Builder::new()
        .name("fence-log".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for line in std::io::BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if line.contains("ERROR") {
                    tracing::error!("{line}");
                } else {
                    tracing::warn!("{line}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("the fence process's messages are not logged: {e}");
    }
}

/// Copies the fence process's watchdog status into `status`, until it exits.
fn forward_status(mut reader: std::io::PipeReader, status: watch::Sender<DeviceStatus>) {
    use std::io::Read;
    let spawned = std::thread::Builder::new()
        .name("fence-status".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(s) = buf[..n]
                    .iter()
                    .rev()
                    .find_map(|b| DeviceStatus::from_byte(*b))
                {
                    status.send_replace(s);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("the watchdog's status is not read: {e}");
    }
}

/// The in-process fence: the same loop on a std thread (not a tokio task: starved workers
/// must not delay it), fed through a channel.
fn spawn_fallback(data_dir: PathBuf) -> mpsc::Sender<Option<Armed>> {
    let (tx, rx) = mpsc::channel::<Option<Armed>>();
    let spawned = std::thread::Builder::new()
        .name("pg-fence".into())
        .spawn(move || {
            let mut fence = FenceLoop::new(data_dir, None, say_tracing);
            loop {
                let sleep = fence.sleep(boottime_now());
                match rx.recv_timeout(sleep) {
                    Ok(m) => fence.message(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                fence.tick(boottime_now());
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the fence thread: {e}; only the HA loop stops PostgreSQL");
    }
    tx
}
