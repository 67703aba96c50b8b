//! What the HA core asks for, and what it is told back.

use crate::dcs::Version;

use super::types::{MonoTime, Observation, PeerReport, WatchdogState};

/// Identifies one action, so its outcome can be matched to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActionId(pub u64);

/// An action for the shell to carry out. DCS actions are quick and answered inline; PostgreSQL
/// actions marked *task* may take long and are answered when done. Every action is answered
/// with exactly one [`Input::Completed`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop PostgreSQL immediately, now, before anything else (SIGQUIT; no checkpoint, no
    /// waiting for clients). Used when the lock is lost or its deadline passed.
    StopNow,
    /// Take the leader lock if free. Answer: [`Outcome::Lock`] with the send time.
    AcquireLock,
    /// Renew the lock; give up (count as failed) at `deadline`. Answer: [`Outcome::Lock`].
    RenewLock {
        /// The lease deadline: an answer after it is worthless.
        deadline: MonoTime,
    },
    /// Release the lock (PostgreSQL is already stopped or a replica): only the instance of it
    /// seen at `version`, so that a late release cannot delete a lock taken again since.
    ReleaseLock {
        /// The lock's version when the release was decided.
        version: Option<Version>,
    },
    /// Race for the `initialize` key (create-if-absent with `""`).
    ClaimInitialize,
    /// Write `initialize = sysid` (adopting an existing data directory, or healing the store).
    WriteInitialize {
        /// The system identifier.
        sysid: String,
    },
    /// Delete `initialize` after a failed bootstrap.
    CancelInitialize,
    /// Write `config` from `bootstrap.dcs`: the key is missing (a new cluster, or a wiped
    /// store) and we lead.
    SeedConfig,
    /// Copy PostgreSQL's timeline history up to `timeline` (the one we run on) into the
    /// `history` key: lines it already holds stay as they are, missing ones are added, the
    /// newest naming us as the new leader.
    WriteHistory {
        /// Our current timeline.
        timeline: u64,
    },
    /// Write the `sync` key: only if its version is still `version` (`None`: it is missing or
    /// unreadable, write it anyway). Answer: [`Outcome::Declined`] when another write came first.
    WriteSync {
        /// The new value.
        value: crate::dcs::SyncState,
        /// The key's version when the step was decided.
        version: Option<Version>,
    },
    /// Set `synchronous_standby_names` and reload a running server (inline); `None` gives it
    /// back to the configuration (empty, or the strict placeholder in a strict synchronous
    /// mode, or the user's value in asynchronous mode).
    SetSyncStandbyNames {
        /// The value.
        value: Option<String>,
    },
    /// Publish this member as `nosync` (its member key's tags), so that the leader takes it out
    /// of the synchronous set before it stops (inline).
    ReleaseSync,
    /// Clear the `failover` key (compare-and-set on the version seen).
    ClearFailover {
        /// Version of the key when it was seen.
        version: Option<Version>,
    },
    /// Write the `failsafe` key (Patroni's `{"name": "api_url", ...}`): the members a primary
    /// cut off from the store must reach to stay one (inline; only while we hold the lock).
    WriteFailsafe {
        /// The members and their REST API URLs.
        value: std::collections::BTreeMap<String, String>,
    },
    /// Failsafe mode, the store out of reach: ask every other member of the `failsafe` key to
    /// confirm this primary (`POST /failsafe`, in parallel, each within 2 s and one retry).
    /// Answer: [`Outcome::Failsafe`].
    ConfirmFailsafe {
        /// `(name, api_url)` of each member to ask.
        members: Vec<(String, String)>,
    },
    /// Ask these peers for their status (`GET /patroni`, short timeout, in parallel).
    /// Answer: [`Outcome::Peers`].
    ProbePeers {
        /// Member names to ask.
        names: Vec<String>,
    },
    /// *Task*: initdb, start, create users, write `initialize` and `config`, take the lock.
    Bootstrap,
    /// *Task*: make this member a copy of `from` (pg_basebackup).
    Clone {
        /// The member to copy from.
        from: String,
    },
    /// *Task*: pg_rewind against `from`.
    Rewind {
        /// The new leader.
        from: String,
    },
    /// *Task*: move the data directory aside, so the member clones afresh.
    RemoveDataDir,
    /// *Task*: start PostgreSQL as a primary (we hold the lock; crash recovery on the same
    /// timeline).
    StartPrimary {
        /// The first start of a cluster this member has just created: then create the
        /// bootstrap users and run `bootstrap.post_bootstrap`.
        bootstrapped: bool,
    },
    /// *Task*: start PostgreSQL as a replica of `upstream` (or of nobody yet).
    StartReplica {
        /// The member to stream from.
        upstream: Option<String>,
    },
    /// *Task*: point a running replica at a new upstream (reload where possible).
    Follow {
        /// The member to stream from.
        upstream: String,
    },
    /// *Task*: promote to primary (the cycles after it record the new timeline in `history`).
    Promote,
    /// *Task*: planned demotion: CHECKPOINT, fast stop, so the candidate has every WAL record.
    StopGraceful,
    /// *Task*: `POST /restart`: a fast stop, then a start as the primary (only while holding
    /// the lock with a primary) or as a replica of `upstream`.
    Restart {
        /// Start as the primary.
        primary: bool,
        /// A replica's upstream.
        upstream: Option<String>,
    },
    /// *Task*: `POST /reinitialize`: an immediate stop, then the data directory emptied; the
    /// cycles after it clone afresh from the leader.
    Reinitialize,
    /// Render PostgreSQL's configuration from the dynamic configuration at `version` (the one
    /// in force) and reload a running server (inline).
    ApplyConfig {
        /// The `config` key's version.
        version: Version,
    },
    /// On the primary: keep a physical replication slot for each of `members` (Patroni's
    /// names) and drop inactive physical slots of nobody listed (inline).
    EnsureSlots {
        /// The other members.
        members: Vec<String>,
    },
    /// Answer an API request (inline).
    Answer {
        /// The request.
        id: RequestId,
        /// `Ok`, or the message for the API's error reply.
        result: Result<(), String>,
    },
    /// The member cannot continue (a different cluster's data, ...). The shell stops
    /// PostgreSQL and exits non-zero with the reason.
    Fatal {
        /// Why.
        reason: String,
    },
}

impl Action {
    /// A long-running PostgreSQL task: while one runs, no other task starts.
    pub fn is_task(&self) -> bool {
        matches!(
            self,
            Action::Bootstrap
                | Action::Clone { .. }
                | Action::Rewind { .. }
                | Action::RemoveDataDir
                | Action::StartPrimary { .. }
                | Action::StartReplica { .. }
                | Action::Follow { .. }
                | Action::Promote
                | Action::StopGraceful
                | Action::Restart { .. }
                | Action::Reinitialize
        )
    }

    /// A task that ends with PostgreSQL writable: a lapsed or lost lease must stop it too.
    pub fn makes_writable(&self) -> bool {
        matches!(
            self,
            Action::StartPrimary { .. } | Action::Promote | Action::Restart { primary: true, .. }
        )
    }
}

/// Identifies an API request, so its answer reaches the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// What an API caller asks the core for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `POST /restart` (its conditions already checked by the API).
    Restart,
    /// `POST /reinitialize`.
    Reinitialize,
    /// `POST /failsafe`: `leader`, cut off from the store in failsafe mode, asks this member to
    /// confirm it. Accepted, the member takes no lock for `ttl` (the longer of its own and the
    /// one the leader sent), which is what lets the leader stay writable that long.
    Failsafe {
        /// The sender's member name.
        leader: String,
        /// The sender's ttl, when it said.
        ttl: Option<std::time::Duration>,
    },
}

/// How an action went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// Not done (an error, a timeout); the text says why.
    Failed(String),
    /// The store answered and said no: a compare-and-set or create-if-absent found another
    /// member's value (a lost race).
    Declined,
    /// A lock operation: `held` is true when we now hold it. `sent_at` is when the request
    /// left, which is what the lease deadline counts from (ha-safety rule 1).
    Lock {
        /// We hold the lock.
        held: bool,
        /// The store answered (false: timeout or connection error).
        answered: bool,
        /// When the request was sent.
        sent_at: MonoTime,
    },
    /// Peer statuses.
    Peers(PeerReport),
    /// The answers to [`Action::ConfirmFailsafe`]: the members that did not accept, and when
    /// the requests were sent (the extended deadline counts from then, as a lease's does).
    Failsafe {
        /// Members that did not answer `200 Accepted` in time.
        refused: Vec<String>,
        /// When the requests were sent.
        sent_at: MonoTime,
    },
}

/// An input to [`super::HaCore::step`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A fresh observation: run a cycle.
    Observed(Box<Observation>),
    /// An action finished.
    Completed {
        /// Which.
        id: ActionId,
        /// How.
        outcome: Outcome,
    },
    /// A deadline passed (or the shell just woke up); no new observation.
    Tick,
    /// An API request; answered with [`Action::Answer`], now or when its task ends.
    Requested {
        /// The caller's id.
        id: RequestId,
        /// What is asked.
        request: Request,
    },
    /// The member is shutting down.
    Shutdown,
    /// The fence reported a new state of the watchdog: a required one that failed demotes a
    /// primary at once, without waiting for the next observation (whose store read may take up
    /// to `retry_timeout`).
    Watchdog(WatchdogState),
}
