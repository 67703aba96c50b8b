//! The fence's loop, shared by the fence process and the in-process fallback: when the
//! armed deadline passes it kills PostgreSQL until it is down, and it drives the watchdog.
//! Also its constants and the boot-time timer that wakes the fence process.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use super::Armed;
use crate::agent::clock::boottime_now;
use crate::agent::watchdog::WatchdogDevice;
use crate::postgres::kill_data_dir_processes;

/// How often a kill in progress is repeated until PostgreSQL is confirmed down.
pub(super) const KILL_EVERY: Duration = Duration::from_millis(20);
/// After this long without confirmation a kill goes on, but slower and with an error logged.
pub(super) const KILL_SLOW_AFTER: Duration = Duration::from_secs(60);
/// The longest sleep of the loop: the parent check and a clock that jumped (suspend) are
/// noticed at least this often.
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How the fence reports: after acting, never before, and never waiting for the reader.
pub(in crate::agent) type Say = fn(&str);

/// The fence's state machine, shared by the fence process and the in-process fallback.
pub(super) struct FenceLoop {
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
    pub(super) fn new(data_dir: PathBuf, watchdog: Option<WatchdogDevice>, say: Say) -> Self {
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
    pub(super) fn message(&mut self, armed: Option<Armed>) {
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
    pub(super) fn sleep(&self, now: Duration) -> Duration {
        match (self.killing_since, self.deadline) {
            (Some(since), _) if now.saturating_sub(since) > KILL_SLOW_AFTER => MAX_SLEEP,
            (Some(_), _) => KILL_EVERY,
            (None, Some(d)) => d.saturating_sub(now).min(MAX_SLEEP),
            (None, None) => MAX_SLEEP,
        }
    }

    /// Fires the deadline when it has passed; continues a kill in progress.
    pub(super) fn tick(&mut self, now: Duration) {
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
    pub(super) fn finish(&mut self) -> bool {
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

/// A `CLOCK_BOOTTIME` timerfd, so that the loop wakes at the deadline even across a suspend.
pub(super) struct BootTimer {
    pub(super) fd: RawFd,
}

impl BootTimer {
    pub(super) fn new() -> Option<BootTimer> {
        // SAFETY: timerfd_create has no memory preconditions.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
        };
        (fd >= 0).then_some(BootTimer { fd })
    }

    /// Arms the timer for the absolute boot time `at`.
    pub(super) fn set(&self, at: Duration) -> bool {
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

    pub(super) fn drain(&self) {
        let mut n = 0u64;
        // SAFETY: a nonblocking read of the 8-byte expiry count into a valid u64.
        unsafe {
            libc::read(self.fd, (&mut n as *mut u64).cast(), 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Watchdog, WatchdogMode};

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
