//! The wire format of the messages from the agent to the fence process: [`MESSAGE_LEN`] bytes,
//! the deadline in `CLOCK_BOOTTIME` nanoseconds (0: disarmed), then the ttl in milliseconds.

use std::time::Duration;

/// Size of one message to the fence process.
pub const MESSAGE_LEN: usize = 16;

/// An armed fence: the lease deadline on the boot-time clock ([`boottime_now`](crate::agent::clock::boottime_now)) and the
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
}
