//! `pgwarden fence-helper`: the fence process's entry, its arguments and its report to stderr.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use super::fence_loop::{BootTimer, FenceLoop, MAX_SLEEP};
use super::{MESSAGE_LEN, decode};
use crate::agent::clock::boottime_now;
use crate::agent::watchdog::{DeviceStatus, WatchdogDevice};
use crate::config::{Watchdog, WatchdogMode};

/// Writes `bytes` to `fd` only if it takes them at once (a pipe with room, a file, a
/// terminal): a stuck reader loses them; it never stops the fence.
fn write_if_ready(fd: RawFd, bytes: &[u8]) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one initialised pollfd, without waiting.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) } == 1 && pfd.revents & libc::POLLOUT != 0;
    if ready {
        // a pipe with room takes up to PIPE_BUF bytes without blocking
        let n = bytes.len().min(libc::PIPE_BUF);
        // SAFETY: write(2) of a valid buffer; the result does not matter.
        unsafe {
            libc::write(fd, bytes.as_ptr().cast(), n);
        }
    }
}

/// The fence process's report: one line to stderr (read by the agent into its log).
fn say_stderr(line: &str) {
    write_if_ready(
        libc::STDERR_FILENO,
        format!("pgwarden fence-helper: {line}\n").as_bytes(),
    );
}

/// The watchdog's status: one byte to stdout (read by the agent, see `agent_side`).
fn tell_stdout(status: DeviceStatus) {
    write_if_ready(libc::STDOUT_FILENO, &[status as u8]);
}

/// `pgwarden fence-helper`'s arguments (started by the agent; not for humans).
///
/// Parsed by hand, not by clap: the fence process runs as little of the binary as it can,
/// so that few of its pages become resident in it.
#[derive(Debug, PartialEq)]
pub struct FenceHelperArgs {
    /// PostgreSQL's data directory (`--data-dir`).
    pub data_dir: PathBuf,
    /// watchdog.mode (`--watchdog-mode`): off, automatic or required.
    pub watchdog_mode: String,
    /// watchdog.device (`--watchdog-device`).
    pub watchdog_device: PathBuf,
    /// watchdog.safety_margin in seconds, -1 for half of ttl (`--watchdog-safety-margin`).
    pub watchdog_safety_margin: i64,
}

impl FenceHelperArgs {
    /// The arguments after `fence-helper`.
    pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Self, String> {
        let mut data_dir = None;
        let mut parsed = FenceHelperArgs {
            data_dir: PathBuf::new(),
            watchdog_mode: "off".into(),
            watchdog_device: PathBuf::from("/dev/watchdog"),
            watchdog_safety_margin: 5,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let flag = flag.to_string_lossy().into_owned();
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--data-dir" => data_dir = Some(PathBuf::from(value)),
                "--watchdog-mode" => parsed.watchdog_mode = value.to_string_lossy().into_owned(),
                "--watchdog-device" => parsed.watchdog_device = PathBuf::from(value),
                "--watchdog-safety-margin" => {
                    parsed.watchdog_safety_margin = value
                        .to_string_lossy()
                        .parse()
                        .map_err(|_| format!("{flag}: not a whole number: {value:?}"))?
                }
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        parsed.data_dir = data_dir.ok_or("--data-dir is required")?;
        Ok(parsed)
    }
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
            tell_stdout,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(Into::into).collect()
    }

    #[test]
    fn arguments_parse_with_defaults_for_the_watchdog() {
        let a = FenceHelperArgs::parse(args(&["--data-dir", "/pg"])).unwrap();
        assert_eq!(a.data_dir, PathBuf::from("/pg"));
        assert_eq!(a.watchdog_mode, "off");
        assert_eq!(a.watchdog_device, PathBuf::from("/dev/watchdog"));
        assert_eq!(a.watchdog_safety_margin, 5);
        let a = FenceHelperArgs::parse(args(&[
            "--watchdog-mode",
            "required",
            "--data-dir",
            "/pg",
            "--watchdog-device",
            "/tmp/wd",
            "--watchdog-safety-margin",
            "-1",
        ]))
        .unwrap();
        assert_eq!(a.watchdog_mode, "required");
        assert_eq!(a.watchdog_device, PathBuf::from("/tmp/wd"));
        assert_eq!(a.watchdog_safety_margin, -1);
    }

    #[test]
    fn bad_arguments_are_named() {
        let e = FenceHelperArgs::parse(args(&[])).unwrap_err();
        assert!(e.contains("--data-dir"), "{e}");
        let e = FenceHelperArgs::parse(args(&["--data-dir"])).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = FenceHelperArgs::parse(args(&["--data-dir", "/pg", "--bogus", "x"])).unwrap_err();
        assert!(e.contains("--bogus"), "{e}");
        let e = FenceHelperArgs::parse(args(&[
            "--data-dir",
            "/pg",
            "--watchdog-safety-margin",
            "x",
        ]))
        .unwrap_err();
        assert!(e.contains("whole number"), "{e}");
    }
}
