//! The watchdog device, driven by the fence process (never by the agent's own threads, so a
//! frozen agent stops the keepalives): opened at the first armed deadline, its timeout set to
//! `ttl - safety_margin`, a keepalive byte written at every new armed deadline (each renewal),
//! and the magic close `V` when the fence is disarmed (demoted, paused, stopping) or
//! PostgreSQL was confirmed down, as Patroni does.
//!
//! Tests use a FIFO or a regular file as the device: the `WDIOC_SETTIMEOUT` ioctl then fails
//! with ENOTTY and plain writes are used. Never point a test at `/dev/watchdog`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::fence::Say;
use crate::config::{Watchdog, WatchdogMode};

/// `_IOWR('W', 6, int)` from `<linux/watchdog.h>` (the generic ioctl layout: x86, arm, riscv).
const WDIOC_SETTIMEOUT: u64 = (3 << 30) | (4 << 16) | ((b'W' as u64) << 8) | 6;

/// The device's state as the fence process tells the agent: one byte on its stdout at each
/// change (the agent's [`crate::ha::WatchdogState`] is built from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DeviceStatus {
    /// Not open: never opened yet, or closed (magic close) when the fence was disarmed.
    Closed = b'C',
    /// Open, and the last keepalive was written.
    Active = b'A',
    /// Opening it or a keepalive failed; retried at the next armed message.
    Failed = b'F',
}

impl DeviceStatus {
    pub fn from_byte(b: u8) -> Option<DeviceStatus> {
        match b {
            b'C' => Some(DeviceStatus::Closed),
            b'A' => Some(DeviceStatus::Active),
            b'F' => Some(DeviceStatus::Failed),
            _ => None,
        }
    }
}

/// How the device's status reaches the agent (never waiting for it).
pub type Tell = fn(DeviceStatus);

/// A watchdog device as the fence process uses it.
pub struct WatchdogDevice {
    cfg: Watchdog,
    /// The status last told.
    status: DeviceStatus,
    tell: Tell,
    fd: Option<OwnedFd>,
    /// The timeout last set with the ioctl; `None` after ENOTTY (plain writes only).
    timeout: Option<Duration>,
    ioctl_supported: bool,
    /// The last open/write failure reported, so that a broken device is not reported at
    /// every renewal.
    reported: Option<String>,
    say: Say,
}

impl WatchdogDevice {
    pub fn new(cfg: Watchdog, say: Say, tell: Tell) -> WatchdogDevice {
        WatchdogDevice {
            cfg,
            status: DeviceStatus::Closed,
            tell,
            fd: None,
            timeout: None,
            ioctl_supported: true,
            reported: None,
            say,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.cfg.mode != WatchdogMode::Off
    }

    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// A new armed deadline for a lock of `ttl`: open the device if needed, (re)set its
    /// timeout, write a keepalive.
    pub fn keepalive(&mut self, ttl: Duration) {
        if !self.is_enabled() {
            return;
        }
        if self.fd.is_none() {
            match self.open() {
                Ok(fd) => {
                    self.fd = Some(fd);
                    self.timeout = None;
                }
                Err(e) => {
                    self.report(format!("cannot open {}: {e}", self.cfg.device.display()));
                    self.set_status(DeviceStatus::Failed);
                    return;
                }
            }
        }
        let want = self.cfg.timeout(ttl);
        if self.ioctl_supported && self.timeout != Some(want) {
            self.set_timeout(want);
        }
        if let Err(e) = self.write(b"1") {
            self.report(format!(
                "keepalive to {} failed: {e}",
                self.cfg.device.display()
            ));
            self.fd = None;
            self.set_status(DeviceStatus::Failed);
        } else {
            self.reported = None;
            self.set_status(DeviceStatus::Active);
        }
    }

    /// Magic close: `V` (the driver stops the timer), then close.
    pub fn disable(&mut self) {
        self.set_status(DeviceStatus::Closed);
        if self.fd.is_none() {
            return;
        }
        if let Err(e) = self.write(b"V") {
            self.report(format!(
                "magic close of {} failed: {e}",
                self.cfg.device.display()
            ));
        }
        self.fd = None;
    }

    fn set_status(&mut self, status: DeviceStatus) {
        if self.status != status {
            self.status = status;
            (self.tell)(status);
        }
    }

    fn open(&self) -> std::io::Result<OwnedFd> {
        let path = CString::new(self.cfg.device.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of blocking the fence.
        // O_APPEND: a regular file standing in for the device keeps every byte written.
        // SAFETY: open(2) on a valid NUL-terminated path; the fd is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn set_timeout(&mut self, want: Duration) {
        let Some(fd) = &self.fd else { return };
        let mut secs: libc::c_int = want.as_secs().min(i32::MAX as u64) as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the valid pointer.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut secs) };
        if rc == 0 {
            self.timeout = Some(want);
            if secs as u64 != want.as_secs() {
                (self.say)(&format!(
                    "watchdog {} rounded the timeout of {}s to {secs}s",
                    self.cfg.device.display(),
                    want.as_secs()
                ));
            }
            return;
        }
        let e = std::io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) {
            self.ioctl_supported = false;
            (self.say)(&format!(
                "WARNING: {} does not support WDIOC_SETTIMEOUT ({e}): \
                 using plain keepalive writes, the device's own timeout applies",
                self.cfg.device.display()
            ));
        } else {
            self.report(format!(
                "setting the timeout of {} to {}s failed: {e}",
                self.cfg.device.display(),
                want.as_secs()
            ));
        }
    }

    fn write(&self, byte: &[u8]) -> std::io::Result<()> {
        let Some(fd) = &self.fd else {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        };
        // SAFETY: write(2) of a valid buffer to our own descriptor.
        let n = unsafe { libc::write(fd.as_raw_fd(), byte.as_ptr().cast(), byte.len()) };
        if n == byte.len() as isize {
            Ok(())
        } else if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Err(std::io::Error::from(std::io::ErrorKind::WriteZero))
        }
    }

    fn report(&mut self, what: String) {
        if self.reported.as_deref() == Some(what.as_str()) {
            return;
        }
        let level = match self.cfg.mode {
            WatchdogMode::Required => "ERROR",
            _ => "WARNING",
        };
        (self.say)(&format!("{level}: watchdog: {what}"));
        self.reported = Some(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_linux_watchdog_h() {
        assert_eq!(WDIOC_SETTIMEOUT, 0xC004_5706);
    }

    #[test]
    fn a_regular_file_gets_keepalives_and_the_magic_close() {
        let path = std::env::temp_dir().join(format!("pgw-wd-unit-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let mut wd = WatchdogDevice::new(
            Watchdog {
                mode: WatchdogMode::Automatic,
                device: path.clone(),
                safety_margin: 5,
            },
            |_| {},
            |_| {},
        );
        wd.keepalive(Duration::from_secs(30));
        assert!(wd.is_open());
        assert!(
            !wd.ioctl_supported,
            "a regular file has no WDIOC_SETTIMEOUT"
        );
        wd.keepalive(Duration::from_secs(30));
        wd.disable();
        assert!(!wd.is_open());
        // re-armed: opened again
        wd.keepalive(Duration::from_secs(30));
        wd.disable();
        assert_eq!(std::fs::read(&path).unwrap(), b"11V1V");
        let _ = std::fs::remove_file(&path);
    }

    thread_local! {
        static TOLD: std::cell::RefCell<Vec<DeviceStatus>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn record(s: DeviceStatus) {
        TOLD.with(|t| t.borrow_mut().push(s));
    }

    #[test]
    fn the_status_is_told_at_each_change_only() {
        let path = std::env::temp_dir().join(format!("pgw-wd-status-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let cfg = |device: std::path::PathBuf| Watchdog {
            mode: WatchdogMode::Required,
            device,
            safety_margin: 5,
        };
        let mut wd = WatchdogDevice::new(cfg(path.clone()), |_| {}, record);
        wd.keepalive(Duration::from_secs(30));
        wd.keepalive(Duration::from_secs(30));
        wd.disable();
        wd.disable();
        let mut missing = WatchdogDevice::new(cfg("/nonexistent/watchdog".into()), |_| {}, record);
        missing.keepalive(Duration::from_secs(30));
        missing.keepalive(Duration::from_secs(30));
        missing.disable();
        use DeviceStatus::*;
        assert_eq!(
            TOLD.with(|t| t.borrow().clone()),
            vec![Active, Closed, Failed, Closed]
        );
        for s in [Closed, Active, Failed] {
            assert_eq!(DeviceStatus::from_byte(s as u8), Some(s));
        }
        assert_eq!(DeviceStatus::from_byte(b'x'), None);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn off_never_opens() {
        let mut wd = WatchdogDevice::new(
            Watchdog {
                device: "/nonexistent/watchdog".into(),
                ..Watchdog::default()
            },
            |_| {},
            |_| {},
        );
        wd.keepalive(Duration::from_secs(30));
        assert!(!wd.is_open());
    }
}
