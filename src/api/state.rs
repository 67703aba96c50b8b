//! What the REST API answers from: a [`Snapshot`] the agent publishes after every HA cycle.
//!
//! Readers take an `Arc` of the current snapshot (a short read lock, never held across
//! `.await`), so no request ever waits on PostgreSQL or the DCS, except the endpoints that
//! Patroni documents as fresh DCS reads (`/cluster`, the write endpoints).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::config::SyncMode;
use crate::dcs::Dcs;
use crate::dcs::model::{ClusterView, truthy};
use crate::postgres::PgStatus;

/// pgwarden's version as reported in `patroni.version` and `patroni_version`.
///
/// It is the crate version (`CARGO_PKG_VERSION`), not a Patroni version: peers and patronictl
/// only display it. The agent may overwrite [`Snapshot::version`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// PostgreSQL as last observed by the agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PgView {
    /// Patroni's state string (`running`, `stopped`, `starting`, `creating replica`, ...; see
    /// patroni-compat §2.1); `unknown` if running but the status query failed.
    pub state: String,
    /// `primary`, `replica`, `standby_leader`, `demoted`, `uninitialized`, ...
    pub role: String,
    /// The last status round while PostgreSQL is up; `None` when it is down or the query
    /// failed, and the document then has no `server_version`, `xlog`, `timeline`, ...
    pub status: Option<PgStatus>,
    /// `database_system_identifier`, from `pg_controldata` (known while PostgreSQL is down too).
    pub sysid: Option<String>,
}

impl PgView {
    /// `server_version_num`, when PostgreSQL is up.
    pub fn server_version(&self) -> Option<u32> {
        self.status.as_ref().map(|s| s.server_version)
    }

    /// Replica: `streaming` or `in archive recovery`.
    pub fn replication_state(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.replication_state.as_deref())
    }

    /// A restart is needed for a changed parameter.
    pub fn pending_restart(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.pending_restart)
    }

    /// The status round of a replica (in recovery).
    pub fn replica(&self) -> Option<&PgStatus> {
        self.status.as_ref().filter(|s| s.in_recovery)
    }

    /// The status round of a primary (not in recovery).
    pub fn primary(&self) -> Option<&PgStatus> {
        self.status.as_ref().filter(|s| !s.in_recovery)
    }
}

/// Everything the API answers from. Published by the agent after every HA cycle.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Cluster name.
    pub scope: String,
    /// This member's name.
    pub name: String,
    /// `patroni.version` in the status document; defaults to [`VERSION`].
    pub version: String,
    /// PostgreSQL as last observed.
    pub pg: PgView,
    /// This member holds the leader lock until then (the agent's safety deadline):
    /// `is_leader ⇔ now < lock_valid_until`.
    pub lock_valid_until: Option<Instant>,
    /// The cached DCS view.
    pub cluster: Option<ClusterView>,
    /// The cached view is trusted until then (`ttl` after the last successful read).
    pub cluster_valid_until: Option<Instant>,
    /// Epoch seconds of the last successful DCS read (0 in the document if never).
    pub dcs_last_seen: Option<i64>,
    /// Effective tags.
    pub tags: Map<String, Value>,
    /// Maintenance mode (from the effective dynamic configuration).
    pub pause: bool,
    /// Dynamic `ttl`.
    pub ttl: Duration,
    /// Dynamic `loop_wait`.
    pub loop_wait: Duration,
    /// Dynamic `maximum_lag_on_failover` (default lag for `/readiness`).
    pub maximum_lag_on_failover: u64,
    /// When the next HA cycle is due (for `/liveness`); `None` → not alive.
    pub next_cycle_at: Option<Instant>,
    /// `max(/status optime, received LSN)`; `None` when neither is known.
    pub leader_optime: Option<u64>,
    /// Failsafe mode is keeping this primary up while the DCS is unreachable.
    pub failsafe_active: bool,
    /// A required watchdog is unhealthy (`watchdog_failed` in the document).
    pub watchdog_failed: bool,
}

impl Snapshot {
    /// A snapshot for an agent that has just started: nothing observed yet, Patroni's default
    /// timings, and the next cycle due now (so `/liveness` answers 200 for the first `2*ttl`, as
    /// Patroni does).
    pub fn new(scope: impl Into<String>, name: impl Into<String>) -> Self {
        Snapshot {
            scope: scope.into(),
            name: name.into(),
            version: VERSION.to_owned(),
            pg: PgView {
                state: "stopped".into(),
                role: "uninitialized".into(),
                ..PgView::default()
            },
            lock_valid_until: None,
            cluster: None,
            cluster_valid_until: None,
            dcs_last_seen: None,
            tags: Map::new(),
            pause: false,
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            maximum_lag_on_failover: 1_048_576,
            next_cycle_at: Some(Instant::now()),
            leader_optime: None,
            failsafe_active: false,
            watchdog_failed: false,
        }
    }

    /// This member holds the leader lock at `now`.
    pub fn is_leader(&self, now: Instant) -> bool {
        self.lock_valid_until.is_some_and(|t| now < t)
    }

    /// The cached DCS view if it is still trusted at `now` (Patroni's `dcs.cluster`).
    pub fn valid_cluster(&self, now: Instant) -> Option<&ClusterView> {
        match (&self.cluster, self.cluster_valid_until) {
            (Some(c), Some(until)) if now < until => Some(c),
            _ => None,
        }
    }

    /// The dynamic configuration as last seen (even from an expired view: Patroni keeps using
    /// its cached global config when the DCS is away).
    pub fn global_config(&self) -> Option<&Map<String, Value>> {
        self.cluster
            .as_ref()
            .and_then(|c| c.config.as_ref())
            .map(|v| &v.value)
    }

    /// `sync_standby` / `quorum_standby` flags of the status document: this member is listed in
    /// the `sync` key of a trusted view while synchronous mode is on.
    pub fn sync_flags(&self, now: Instant) -> (bool, bool) {
        let Some(c) = self.valid_cluster(now) else {
            return (false, false);
        };
        let mode = SyncMode::of(c.config.as_ref().map(|v| &v.value));
        let listed = c
            .sync
            .as_ref()
            .is_some_and(|s| s.value.members().contains(&self.name.as_str()));
        match mode {
            SyncMode::Off => (false, false),
            SyncMode::On => (listed, false),
            SyncMode::Quorum => (false, listed),
        }
    }

    /// The configuration describes a standby cluster.
    pub fn is_standby_cluster(&self) -> bool {
        is_standby_cluster(self.global_config())
    }

    /// The `noloadbalance` tag is set.
    pub fn noloadbalance(&self) -> bool {
        self.tags.get("noloadbalance").is_some_and(truthy)
    }

    /// The replayed LSN (0 unless a replica).
    pub fn replayed_location(&self) -> u64 {
        self.pg.replica().map_or(0, |s| s.replay_lsn.unwrap_or(0))
    }

    /// The received (written) LSN, falling back to the WAL position (0 unless a replica).
    pub fn received_location(&self) -> u64 {
        self.pg
            .replica()
            .map_or(0, |s| s.receive_lsn.unwrap_or(s.wal_position))
    }
}

/// Patroni's `is_standby_cluster`: `standby_cluster` with a host, port or restore_command.
pub fn is_standby_cluster(config: Option<&Map<String, Value>>) -> bool {
    let Some(Value::Object(sc)) = config.and_then(|c| c.get("standby_cluster")) else {
        return false;
    };
    ["host", "port", "restore_command"].iter().any(|k| {
        sc.get(*k)
            .is_some_and(|v| !v.is_null() && v != "" && v != &Value::Bool(false))
    })
}

/// `pause` of a dynamic configuration.
pub fn config_paused(config: Option<&Map<String, Value>>) -> bool {
    config.and_then(|c| c.get("pause")).is_some_and(truthy)
}

/// Shared handle on the current snapshot: the agent writes, request handlers read.
#[derive(Debug, Clone)]
pub struct ApiState {
    inner: Arc<RwLock<Arc<Snapshot>>>,
}

impl ApiState {
    /// Starts with `initial`.
    pub fn new(initial: Snapshot) -> Self {
        ApiState {
            inner: Arc::new(RwLock::new(Arc::new(initial))),
        }
    }

    /// Replaces the snapshot (the agent calls this after every cycle).
    pub fn publish(&self, s: Snapshot) {
        let s = Arc::new(s);
        match self.inner.write() {
            Ok(mut g) => *g = s,
            Err(poisoned) => *poisoned.into_inner() = s,
        }
    }

    /// The current snapshot; cheap (an `Arc` clone under a short read lock).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.inner.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// What the API asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCommand {
    /// A DCS change was made (failover key written...): run a cycle now.
    Wake,
    /// `POST /reload`: re-read the configuration file.
    Reload,
    /// `POST /restart` (conditions already checked): restart PostgreSQL in its current role and
    /// answer when it is up again or has failed.
    Restart(Reply),
    /// `POST /reinitialize`: stop PostgreSQL, wipe the data directory and let the HA core clone
    /// it afresh from the leader. Answered once the wipe is done.
    Reinitialize(Reply),
    /// `POST /failsafe`: a leader cut off from the store asks this member to confirm it; the
    /// HA core answers at once (`Ok`: accepted, the member takes no lock for a ttl).
    Failsafe(FailsafePing, Reply),
}

/// The body of `POST /failsafe` that the core needs (Patroni sends `name`, `conn_url`,
/// `api_url` and `slots`; pgwarden adds its `ttl`, which Patroni ignores).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafePing {
    /// The sender's member name.
    pub name: String,
    /// The sender's ttl in seconds, when it said.
    pub ttl: Option<Duration>,
}

/// The agent's answer to a command: `Ok` or the message for a 503.
pub type CommandResult = Result<(), String>;

/// A one-shot answer channel carried by a command. It compares equal to any other `Reply`, so
/// commands compare by kind (tests match on them).
#[derive(Clone)]
pub struct Reply(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<CommandResult>>>>);

impl Reply {
    /// A reply channel and the receiver the request handler waits on.
    pub fn new() -> (Reply, tokio::sync::oneshot::Receiver<CommandResult>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Reply(Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    /// Answers (only the first answer counts; a handler that gave up is ignored).
    pub fn send(&self, r: CommandResult) {
        let tx = match self.0.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(tx) = tx {
            let _ = tx.send(r);
        }
    }
}

impl PartialEq for Reply {
    fn eq(&self, _: &Reply) -> bool {
        true
    }
}

impl Eq for Reply {}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

/// Everything the server needs.
#[derive(Clone)]
pub struct ApiContext {
    /// The published snapshot.
    pub state: ApiState,
    /// The store, for fresh reads (`/cluster`, switchover) and the `failover` key.
    pub dcs: Arc<dyn Dcs>,
    /// Commands to the agent (sent with `try_send`: the API never blocks on the agent).
    pub commands: tokio::sync::mpsc::Sender<ApiCommand>,
    /// Timeout of a peer status probe (`GET <api_url>`); Patroni uses 2 s.
    pub peer_timeout: Duration,
    /// Access control (`restapi.authentication`, `allowlist`); default: open.
    pub access: super::access::Access,
}

impl std::fmt::Debug for ApiContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiContext")
            .field("state", &self.state)
            .field("peer_timeout", &self.peer_timeout)
            .finish_non_exhaustive()
    }
}
