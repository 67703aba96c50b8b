//! The agent's clock: `CLOCK_BOOTTIME`, which keeps counting while the machine (or the VM) is
//! suspended. `CLOCK_MONOTONIC` (std's and tokio's `Instant`) stops during a suspend, so a
//! leader resumed after one would believe its lease still valid although the store expired it
//! long ago. With boot time a resumed leader sees its deadline passed at its first wake-up,
//! and the fence process compares the same clock.

use std::time::Duration;

/// Time since boot, suspension included (`clock_gettime(CLOCK_BOOTTIME)`).
pub fn boottime_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    // CLOCK_BOOTTIME exists on every Linux since 2.6.39; this cannot fail with a valid pointer.
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_is_monotonic_and_counts_real_time() {
        let a = boottime_now();
        let m = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let b = boottime_now();
        let mono = m.elapsed();
        assert!(b > a);
        let boot = b - a;
        assert!(boot >= Duration::from_millis(50), "{boot:?}");
        // Without a suspend in between, boot time and monotonic time advance at the same rate.
        let diff = boot.abs_diff(mono);
        assert!(diff < Duration::from_millis(20), "{boot:?} vs {mono:?}");
        // Boot time is at least the monotonic clock (it adds the time spent suspended).
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in boottime_now.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let monotonic = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        assert!(boottime_now() >= monotonic);
    }
}
