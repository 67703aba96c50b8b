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

mod agent_side;
mod fence_loop;
mod helper;
mod message;

pub use agent_side::Fence;
pub(crate) use agent_side::confirm_down;
pub(super) use fence_loop::Say;
pub use helper::{FenceHelperArgs, fence_helper_main};
pub use message::{Armed, MESSAGE_LEN, decode, encode};
