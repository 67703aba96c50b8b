//! What the HA core is told: who it is, the policy in force, and one observation of the world.

use std::collections::BTreeMap;
use std::ops::{Add, Sub};
use std::time::Duration;

use crate::dcs::ClusterView;

/// A point on the member's own monotonic clock. Simulations start it at zero; the shell maps
/// `tokio::time::Instant` onto it. Wall-clock values never enter the core as time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoTime(pub Duration);

impl MonoTime {
    /// Zero, the start of a simulation.
    pub const ZERO: MonoTime = MonoTime(Duration::ZERO);

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: MonoTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for MonoTime {
    type Output = MonoTime;
    fn add(self, d: Duration) -> MonoTime {
        MonoTime(self.0 + d)
    }
}

impl Sub<Duration> for MonoTime {
    type Output = MonoTime;
    fn sub(self, d: Duration) -> MonoTime {
        MonoTime(self.0.saturating_sub(d))
    }
}

/// Who this member is: fixed for the life of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Member name (`name:`).
    pub name: String,
    /// `nofailover` tag (or `failover_priority` <= 0): never take the lock.
    pub nofailover: bool,
    /// `failover_priority` tag, the tie-breaker at equal WAL positions.
    pub failover_priority: i64,
    /// The configuration has a `bootstrap` section, so this member may create the cluster.
    pub can_bootstrap: bool,
}

/// The settings in force (dynamic configuration merged with local), as the core needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Lifetime of the leader lock.
    pub ttl: Duration,
    /// Period of the HA cycle.
    pub loop_wait: Duration,
    /// Bound of one DCS operation.
    pub retry_timeout: Duration,
    /// A replica further behind the leader's last optime than this may not take over.
    pub maximum_lag_on_failover: u64,
    /// Rejoin a diverged former primary with pg_rewind.
    pub use_pg_rewind: bool,
    /// When pg_rewind fails, wipe and clone afresh.
    pub remove_data_directory_on_rewind_failure: bool,
    /// Maintenance mode: never start, stop, promote or demote on our own.
    pub pause: bool,
    /// The leader keeps a physical replication slot for every other member.
    pub use_slots: bool,
    /// `check_timeline`: a member on a timeline older than the cluster's (the `history` key's)
    /// never takes the lock.
    pub check_timeline: bool,
    /// Synchronous replication.
    pub sync: super::sync::SyncPolicy,
    /// `primary_start_timeout`: how long a leader's start as the primary may take before it
    /// hands over to a member that could take over (0: hand over at once after a crash).
    pub primary_start_timeout: Duration,
    /// `shutdown_handover_timeout`: how long at most a member told to stop spends handing
    /// over before it stops anyway (0: it stops at once).
    pub handover_timeout: Duration,
    /// `failsafe_mode`: a primary cut off from the store keeps running while every member of
    /// the `failsafe` key confirms it (see `failsafe`).
    pub failsafe_mode: bool,
    /// How much earlier than the lock could expire the leader stops writing (ha-safety rule 2):
    /// the time an immediate stop takes, clock-rate drift and scheduler lateness.
    pub safety_margin: Duration,
}

impl Policy {
    /// The margin pgwarden uses when not told otherwise: 10% of ttl, at least 1 s and at most
    /// 5 s. An immediate stop takes well under a second on a healthy machine; the rest covers a
    /// starved scheduler and clock drift (a few ppm; 2% would already be generous).
    pub fn default_margin(ttl: Duration) -> Duration {
        (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }
}

/// The state of the data directory, from `pg_controldata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: a new member.
    Empty,
    /// Present but unusable; the reason.
    Invalid(String),
    /// A PostgreSQL cluster.
    Ready {
        /// Database system identifier.
        sysid: String,
        /// The control file says it last ran as a primary (`in production` or `shut down`),
        /// so rejoining another leader may need pg_rewind.
        was_primary: bool,
    },
}

/// PostgreSQL as observed this cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct PgFacts {
    /// The data directory.
    pub data: DataDir,
    /// The postmaster is up (our child is alive).
    pub up: bool,
    /// `pg_is_in_recovery()`; `None` when the query failed or PostgreSQL is down.
    pub in_recovery: Option<bool>,
    /// Current timeline, when known.
    pub timeline: Option<u64>,
    /// Primary: flush LSN; replica: max(receive, replay); 0 when unknown.
    pub wal_position: u64,
    /// The member this replica is configured to stream from.
    pub upstream: Option<String>,
    /// A replica's WAL receiver is streaming.
    pub streaming: bool,
    /// A primary's `synchronous_standby_names` in force; `None` when not known.
    pub synchronous_standby_names: Option<String>,
    /// A primary's WAL senders (`pg_stat_replication`).
    pub replication: Vec<crate::postgres::ReplicationRow>,
    /// The running postmaster is pgwarden's own child, tied to it by a parent-death signal.
    /// `false` for one found running that pgwarden did not start (left by an earlier agent,
    /// by Patroni, or by hand): it would outlive a `kill -9` of the agent, so it is never
    /// promoted nor kept as a primary until restarted under pgwarden. `true` while down.
    pub supervised: bool,
}

impl PgFacts {
    /// PostgreSQL might accept writes: up, and not known to be in recovery. Unknown counts as
    /// writable, because safety must not depend on a query answering.
    pub fn maybe_writable(&self) -> bool {
        self.up && self.in_recovery != Some(true)
    }

    /// Known to run as a replica.
    pub fn is_replica(&self) -> bool {
        self.up && self.in_recovery == Some(true)
    }
}

/// A peer's answer to `GET /patroni` during a leader race.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerFacts {
    /// The peer runs PostgreSQL as a primary.
    pub is_primary: bool,
    /// The peer's WAL position.
    pub wal_position: u64,
    /// The peer's timeline, when it says.
    pub timeline: Option<u64>,
    /// The peer may not become leader.
    pub nofailover: bool,
    /// The peer's failover priority.
    pub failover_priority: i64,
    /// The peer's PostgreSQL is running.
    pub running: bool,
    /// The peer's PostgreSQL is starting: its WAL position is not known yet.
    pub starting: bool,
}

/// Where a member's WAL is, in the one order every member compares by: timeline first, then
/// the position on it (the position alone when either timeline is unknown). A position on
/// another timeline is on another history: a member left on its old timeline (a former primary
/// whose rewind failed, say) lacks every commit of the new one, however far its own WAL goes,
/// and what an old timeline has past the fork was never the cluster's. One order for all, so
/// that two members never each find the other ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPoint {
    pub timeline: Option<u64>,
    pub lsn: u64,
}

impl WalPoint {
    /// May hold WAL `other` lacks: on a later timeline, or further on the same one.
    pub fn ahead_of(self, other: WalPoint) -> bool {
        match (self.timeline, other.timeline) {
            (Some(t), Some(m)) if t != m => t > m,
            _ => self.lsn > other.lsn,
        }
    }

    /// Neither is ahead of the other: where priorities break the tie.
    pub fn level_with(self, other: WalPoint) -> bool {
        match (self.timeline, other.timeline) {
            (Some(t), Some(m)) if t != m => false,
            _ => self.lsn == other.lsn,
        }
    }
}

impl PgFacts {
    /// This member's WAL, for comparing with peers'.
    pub fn wal_point(&self) -> WalPoint {
        WalPoint {
            timeline: self.timeline,
            lsn: self.wal_position,
        }
    }
}

impl PeerFacts {
    /// The peer's WAL, for comparing with ours.
    pub fn wal_point(&self) -> WalPoint {
        WalPoint {
            timeline: self.timeline,
            lsn: self.wal_position,
        }
    }

    /// The peer may hold WAL this member lacks ([`WalPoint::ahead_of`]).
    pub fn ahead_of(&self, pg: &PgFacts) -> bool {
        self.wal_point().ahead_of(pg.wal_point())
    }

    /// Neither this member nor the peer is ahead ([`WalPoint::level_with`]).
    pub fn level_with(&self, pg: &PgFacts) -> bool {
        self.wal_point().level_with(pg.wal_point())
    }
}

/// The watchdog device as far as leadership depends on it: only `watchdog.mode: required`
/// does (Patroni's rule: no promotion, and no primary kept, without an active watchdog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchdogState {
    /// `off` or `automatic`: leadership does not wait for the device.
    Unneeded,
    /// Required, writable, not active yet: it is opened once the lock is held (the fence
    /// process opens it at the first armed deadline), so a promotion waits for [`Self::Active`].
    Ready,
    /// Required and active: opened, its timeout set and kept alive by the fence process.
    Active,
    /// Required but unusable (cannot be written, opening or a keepalive failed, no fence
    /// process to drive it); the reason.
    Unusable(String),
}

/// How far a wall-clock time written in the store (a scheduled switchover's `scheduled_at`)
/// is from this member's wall clock at the observation: the shell compares, the core decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Countdown {
    /// Nothing is scheduled.
    Unscheduled,
    /// Due in this long.
    In(Duration),
    /// Due this long ago.
    Passed(Duration),
    /// A time that cannot be read: never acted on.
    Unreadable,
}

/// One observation: everything the core decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The cluster as read from the store; `None` when the store could not be read.
    pub dcs: Option<ClusterView>,
    /// The local PostgreSQL.
    pub pg: PgFacts,
    /// The policy in force.
    pub policy: Policy,
    /// The watchdog device.
    pub watchdog: WatchdogState,
    /// The failover key's `scheduled_at`, against the wall clock.
    pub switchover_at: Countdown,
}

/// Results of probing peers: name → facts, or `None` when the peer did not answer.
pub type PeerReport = BTreeMap<String, Option<PeerFacts>>;
