//! The fence: kills PostgreSQL when the leader lock's deadline passes, independently of the HA
//! loop. The loop stops PostgreSQL itself at the deadline ([`crate::ha::Action::StopNow`]); the
//! fence is the second line, for an agent that is stuck in a slow call, starved, deadlocked or
//! frozen (SIGSTOP, a suspended VM): ha-safety rule 2.
//!
//! The fence is a separate, single-threaded process: the agent's own binary run as
//! `pgwarden fence-helper --data-dir DIR` (a hidden subcommand), fed through its stdin with
//! fixed-size messages ([`MESSAGE_LEN`] bytes: the deadline in `CLOCK_BOOTTIME` nanoseconds,
//! 0 when disarmed, then the lock's ttl in milliseconds, both little-endian `u64`). Nothing the
//! agent's threads do can delay it. When the deadline passes it SIGKILLs every process of the
//! data directory ([`crate::postgres::kill_data_dir_processes`]) every 20 ms until none is
//! left; a disarm does not cancel a kill in progress. At the end of its stdin (the agent died
//! or dropped the fence) it kills PostgreSQL the same way and exits. It also drives the
//! watchdog device ([`super::watchdog`]), so that a frozen agent stops the keepalives.
//!
//! When the process cannot be started (or dies), the same loop runs on a std thread inside
//! the agent: weaker (it freezes with the agent) but never worse than no fence.

use std::os::fd::{IntoRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use super::clock::boottime_now;
use super::watchdog::WatchdogDevice;
use crate::config::{Watchdog, WatchdogMode};
use crate::postgres::kill_data_dir_processes;

/// Kills every process of PostgreSQL in `data_dir` once (see
/// [`crate::postgres::kill_data_dir_processes`]); how many were still alive.
pub use crate::postgres::kill_data_dir_processes as kill_postmaster;
/// The live postmaster's pid, from `postmaster.pid`.
pub use crate::postgres::postmaster_pid_file_alive as postmaster_pid;

/// Size of one message to the fence process.
pub const MESSAGE_LEN: usize = 16;

/// How often a kill in progress is repeated until PostgreSQL is confirmed down.
const KILL_EVERY: Duration = Duration::from_millis(20);
/// After this long without confirmation a kill goes on, but slower and with an error logged.
const KILL_SLOW_AFTER: Duration = Duration::from_secs(60);
/// An unchanged armed message is written again after this long: the fence process keeps the
/// watchdog alive on every message, so that it fires only when the agent stops talking (not
/// when renewals fail while the agent works: then the agent's own StopNow and disarm come).
const RESEND_AFTER: Duration = Duration::from_secs(1);
/// The longest sleep of the loop: the parent check and a clock that jumped (suspend) are
/// noticed at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// An armed fence: the lease deadline on the boot-time clock ([`boottime_now`]) and the
/// lock's ttl (for the watchdog's timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed {
    pub deadline: Duration,
    pub ttl: Duration,
}

/// The wire form of `armed` (`None`: disarmed).
pub fn encode(armed: Option<Armed>) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    if let Some(a) = armed {
        // a deadline of 0 ns would read as "disarmed"
        let ns = (a.deadline.as_nanos().min(u64::MAX as u128) as u64).max(1);
        m[..8].copy_from_slice(&ns.to_le_bytes());
        let ms = a.ttl.as_millis().min(u64::MAX as u128) as u64;
        m[8..].copy_from_slice(&ms.to_le_bytes());
    }
    m
}

/// The inverse of [`encode`].
pub fn decode(m: &[u8; MESSAGE_LEN]) -> Option<Armed> {
    let ns = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
    let ms = u64::from_le_bytes(m[8..].try_into().expect("8 bytes"));
    (ns != 0).then(|| Armed {
        deadline: Duration::from_nanos(ns),
        ttl: Duration::from_millis(ms),
    })
}

/// How the fence reports: after acting, never before, and never waiting for the reader.
pub(super) type Say = fn(&str);

/// The fence process's report: one line to stderr, only if stderr takes it at once (a pipe
/// with room, a file, a terminal). A stuck log reader loses lines; it never stops the fence.
pub(super) fn say_stderr(line: &str) {
    let line = format!("pgwarden fence-helper: {line}\n");
    let mut pfd = libc::pollfd {
        fd: libc::STDERR_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one initialised pollfd, without waiting.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) } == 1 && pfd.revents & libc::POLLOUT != 0;
    if ready {
        // a pipe with room takes up to PIPE_BUF bytes without blocking
        let n = line.len().min(libc::PIPE_BUF);
        // SAFETY: write(2) of a valid buffer; the result does not matter.
        unsafe {
            libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), n);
        }
    }
}

/// The in-process fallback's report (the log never blocks: `crate::logging`).
fn say_tracing(line: &str) {
    if line.starts_with("ERROR") {
        tracing::error!("fence: {line}");
    } else {
        tracing::warn!("fence: {line}");
    }
}

/// The fence's state machine, shared by the fence process and the in-process fallback.
struct FenceLoop {
    data_dir: PathBuf,
    /// The armed deadline that has not fired yet.
    deadline: Option<Duration>,
    ttl: Duration,
    /// A kill in progress: since when (boot time).
    killing_since: Option<Duration>,
    slow_reported: bool,
    watchdog: Option<WatchdogDevice>,
    /// Where to report (after killing, never before).
    say: Say,
}

impl FenceLoop {
    fn new(data_dir: PathBuf, watchdog: Option<WatchdogDevice>, say: Say) -> Self {
        FenceLoop {
            data_dir,
            deadline: None,
            ttl: Duration::ZERO,
            killing_since: None,
            slow_reported: false,
            watchdog,
            say,
        }
    }

    fn killing(&self) -> bool {
        self.killing_since.is_some()
    }

    /// A message from the agent. A kill in progress goes on whatever it says; the watchdog
    /// follows the message only while PostgreSQL is not being killed.
    fn message(&mut self, armed: Option<Armed>) {
        self.deadline = armed.map(|a| a.deadline);
        if let Some(a) = armed {
            self.ttl = a.ttl;
        }
        if self.killing() {
            return;
        }
        match armed {
            Some(a) if a.deadline > boottime_now() => self.sync_watchdog(true),
            // already passed: the kill comes first (tick), the watchdog after it
            Some(_) => {}
            None => self.sync_watchdog(false),
        }
    }

    /// Keepalive (armed) or magic close.
    fn sync_watchdog(&mut self, armed: bool) {
        if let Some(wd) = &mut self.watchdog {
            if armed {
                wd.keepalive(self.ttl);
            } else {
                wd.disable();
            }
        }
    }

    /// How long the loop may sleep before [`FenceLoop::tick`] is due.
    fn sleep(&self, now: Duration) -> Duration {
        match (self.killing_since, self.deadline) {
            (Some(since), _) if now.saturating_sub(since) > KILL_SLOW_AFTER => MAX_SLEEP,
            (Some(_), _) => KILL_EVERY,
            (None, Some(d)) => d.saturating_sub(now).min(MAX_SLEEP),
            (None, None) => MAX_SLEEP,
        }
    }

    /// Fires the deadline when it has passed; continues a kill in progress.
    fn tick(&mut self, now: Duration) {
        if !self.killing() && self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            self.killing_since = Some(now);
            self.slow_reported = false;
            let killed = kill_data_dir_processes(&self.data_dir);
            if killed > 0 {
                (self.say)(&format!(
                    "WARNING: leader lock deadline passed without renewal: sent SIGKILL to {killed} PostgreSQL processes of {}",
                    self.data_dir.display()
                ));
            }
            return;
        }
        let Some(since) = self.killing_since else {
            return;
        };
        let left = kill_data_dir_processes(&self.data_dir);
        if left == 0 {
            self.killing_since = None;
            // PostgreSQL is down: the watchdog follows the agent again (a reset adds nothing).
            let armed = self.deadline.is_some_and(|d| d > now);
            self.sync_watchdog(armed);
            return;
        }
        if !self.slow_reported && now.saturating_sub(since) > KILL_SLOW_AFTER {
            self.slow_reported = true;
            (self.say)(&format!(
                "ERROR: {left} PostgreSQL processes of {} still alive {}s after SIGKILL; still killing",
                self.data_dir.display(),
                KILL_SLOW_AFTER.as_secs()
            ));
        }
    }

    /// The agent is gone: kill PostgreSQL until it is confirmed down (bounded), then close
    /// the watchdog.
    fn finish(&mut self) -> bool {
        let killed = kill_data_dir_processes(&self.data_dir);
        let down = killed == 0
            || crate::postgres::kill_data_dir_processes_confirmed(
                &self.data_dir,
                KILL_EVERY,
                KILL_SLOW_AFTER,
            );
        if down && let Some(wd) = &mut self.watchdog {
            wd.disable();
        }
        if killed > 0 {
            (self.say)(&format!(
                "WARNING: the agent is gone: sent SIGKILL to {killed} PostgreSQL processes of {}{}",
                self.data_dir.display(),
                if down { "" } else { "; some are still alive" }
            ));
        }
        down
    }
}

/// `pgwarden fence-helper`: the fence process (started by the agent; not for humans).
#[derive(Debug, clap::Args)]
pub struct FenceHelperArgs {
    /// PostgreSQL's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// watchdog.mode: off, automatic or required.
    #[arg(long, default_value = "off")]
    pub watchdog_mode: String,
    /// watchdog.device.
    #[arg(long, default_value = "/dev/watchdog")]
    pub watchdog_device: PathBuf,
    /// watchdog.safety_margin (seconds; -1: half of ttl).
    #[arg(long, default_value_t = 5, allow_hyphen_values = true)]
    pub watchdog_safety_margin: i64,
}

/// The fence process: single-threaded, no runtime, nothing written before a kill.
pub fn fence_helper_main(args: FenceHelperArgs) -> ExitCode {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let mode = WatchdogMode::from_name(&args.watchdog_mode).unwrap_or(WatchdogMode::Off);
    let watchdog = (mode != WatchdogMode::Off).then(|| {
        WatchdogDevice::new(
            Watchdog {
                mode,
                device: args.watchdog_device.clone(),
                safety_margin: args.watchdog_safety_margin,
            },
            say_stderr,
        )
    });
    let mut fence = FenceLoop::new(args.data_dir, watchdog, say_stderr);
    let timer = BootTimer::new();
    let stdin: RawFd = libc::STDIN_FILENO;
    let mut buf = [0u8; 64 * MESSAGE_LEN];
    let mut have = 0usize;
    // (a parent that died before this point is noticed at the end of stdin; pid 1 may well
    // be the agent itself, in a container)
    let mut eof = false;
    while !eof {
        let now = boottime_now();
        let sleep = fence.sleep(now);
        let wake_at = now + sleep;
        let timeout_ms = match &timer {
            // the timer counts suspension; poll's timeout does not, and stays as a backstop
            Some(t) if t.set(wake_at) => MAX_SLEEP.as_millis() as libc::c_int,
            _ => sleep.as_millis().max(1) as libc::c_int,
        };
        let mut fds = [
            libc::pollfd {
                fd: stdin,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: timer.as_ref().map_or(-1, |t| t.fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) on an array of two initialised pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if rc > 0 && fds[0].revents != 0 {
            // SAFETY: read(2) into the free tail of our buffer.
            let n = unsafe { libc::read(stdin, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
            if n == 0 {
                eof = true;
            } else if n < 0 {
                let e = std::io::Error::last_os_error();
                if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
                    eof = true;
                }
            } else {
                have += n as usize;
                let whole = have / MESSAGE_LEN * MESSAGE_LEN;
                for m in buf[..whole].chunks_exact(MESSAGE_LEN) {
                    fence.message(decode(m.try_into().expect("a whole message")));
                }
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
        }
        if let Some(t) = &timer {
            t.drain();
        }
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            eof = true;
        }
        fence.tick(boottime_now());
    }
    if fence.finish() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A `CLOCK_BOOTTIME` timerfd, so that the loop wakes at the deadline even across a suspend.
struct BootTimer {
    fd: RawFd,
}

impl BootTimer {
    fn new() -> Option<BootTimer> {
        // SAFETY: timerfd_create has no memory preconditions.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
        };
        (fd >= 0).then_some(BootTimer { fd })
    }

    /// Arms the timer for the absolute boot time `at`.
    fn set(&self, at: Duration) -> bool {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: at.as_secs() as libc::time_t,
                tv_nsec: at.subsec_nanos().max(1) as libc::c_long,
            },
        };
        // SAFETY: timerfd_settime reads one valid itimerspec; the old value is not wanted.
        unsafe {
            libc::timerfd_settime(
                self.fd,
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            ) == 0
        }
    }

    fn drain(&self) {
        let mut n = 0u64;
        // SAFETY: a nonblocking read of the 8-byte expiry count into a valid u64.
        unsafe {
            libc::read(self.fd, (&mut n as *mut u64).cast(), 8);
        }
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
        let inner = Inner {
            data_dir,
            pipe: AtomicI32::new(-1),
            helper_pid: AtomicI32::new(-1),
            last_deadline: AtomicU64::new(u64::MAX),
            last_ttl: AtomicU64::new(u64::MAX),
            last_write: AtomicU64::new(0),
            fallback: OnceLock::new(),
        };
        match spawn_helper(&inner.data_dir, &wd) {
            Ok((pid, fd)) => {
                tracing::info!(pid, "started the fence process");
                inner.helper_pid.store(pid, Ordering::SeqCst);
                inner.pipe.store(fd, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::error!(
                    "cannot start the fence process ({e}): fencing from a thread of the agent instead"
                );
                if wd.mode != WatchdogMode::Off {
                    tracing::error!("the watchdog is not used without the fence process");
                }
            }
        }
        Ok(Fence {
            inner: Arc::new(inner),
        })
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
fn spawn_helper(data_dir: &Path, wd: &Watchdog) -> std::io::Result<(i32, RawFd)> {
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
        .stdout(std::process::Stdio::null())
        .stderr(log_writer);
    if wd.mode != WatchdogMode::Off {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let a = Armed {
            deadline: Duration::from_nanos(123_456_789_012),
            ttl: Duration::from_secs(30),
        };
        assert_eq!(decode(&encode(Some(a))), Some(a));
        assert_eq!(decode(&encode(None)), None);
        assert_eq!(encode(None), [0u8; MESSAGE_LEN]);
        let m = encode(Some(a));
        assert_eq!(&m[..8], &123_456_789_012u64.to_le_bytes());
        assert_eq!(&m[8..], &30_000u64.to_le_bytes());
        // a zero deadline stays armed
        let zero = Armed {
            deadline: Duration::ZERO,
            ttl: a.ttl,
        };
        assert!(decode(&encode(Some(zero))).is_some());
    }

    #[test]
    fn the_watchdog_follows_the_lease_and_closes_only_once_postgres_is_down() {
        let dir = std::env::temp_dir().join(format!("pgw-fence-wd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let device = dir.join("watchdog");
        std::fs::write(&device, b"").unwrap();
        let wd = WatchdogDevice::new(
            Watchdog {
                mode: WatchdogMode::Automatic,
                device: device.clone(),
                safety_margin: 5,
            },
            |_| {},
        );
        let mut f = FenceLoop::new(dir.join("data"), Some(wd), |_| {});
        let ttl = Duration::from_secs(30);
        let at = |d: Duration| Some(Armed { deadline: d, ttl });
        let now = boottime_now();
        f.message(at(now + Duration::from_secs(20)));
        f.message(at(now + Duration::from_secs(21)));
        f.message(None);
        assert_eq!(std::fs::read(&device).unwrap(), b"11V");
        f.message(at(now + Duration::from_secs(20)));
        // a deadline that has passed: no keepalive; the kill starts
        f.message(at(now));
        f.tick(boottime_now());
        assert!(f.killing());
        f.message(None);
        assert_eq!(
            std::fs::read(&device).unwrap(),
            b"11V1",
            "no magic close before PostgreSQL is confirmed down"
        );
        f.tick(boottime_now());
        assert!(!f.killing());
        assert_eq!(std::fs::read(&device).unwrap(), b"11V1V");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_disarm_does_not_cancel_a_kill_in_progress() {
        let dir = std::env::temp_dir().join(format!("pgw-fence-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = FenceLoop::new(dir.clone(), None, |_| {});
        let now = boottime_now();
        f.message(Some(Armed {
            deadline: now + Duration::from_secs(10),
            ttl: Duration::from_secs(30),
        }));
        assert_eq!(f.sleep(now), MAX_SLEEP);
        f.tick(now);
        assert!(!f.killing());
        f.message(Some(Armed {
            deadline: now,
            ttl: Duration::from_secs(30),
        }));
        f.tick(now);
        assert!(f.killing(), "the deadline fired");
        assert_eq!(f.sleep(now), KILL_EVERY);
        f.message(None);
        assert!(f.killing(), "a disarm does not cancel the kill");
        // nothing runs in this directory: the next round confirms it down
        f.tick(now);
        assert!(!f.killing());
        assert_eq!(f.deadline, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
