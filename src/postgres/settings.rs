//! Plain settings and small value types of the `postgres` module.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A role name and its (optional) password.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
}

/// Everything the module needs to run one PostgreSQL server. The caller resolves defaults.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub data_dir: PathBuf,
    /// Directory holding `postgres`, `initdb`, `pg_controldata`, ... (caller defaults it to
    /// `/usr/lib/postgresql/15/bin`).
    pub bin_dir: PathBuf,
    /// `listen_addresses`.
    pub listen_host: String,
    /// `port`.
    pub port: u16,
    /// Host other members use to reach us (for our own conn_url).
    pub connect_host: String,
    /// `unix_socket_directories`; `None`: we connect to ourselves over TCP.
    pub socket_dir: Option<PathBuf>,
    /// Member name (`application_name` towards the upstream).
    pub name: String,
    /// Cluster name (`cluster_name`).
    pub scope: String,
    /// Already merged GUCs.
    pub parameters: BTreeMap<String, String>,
    /// `pg_hba.conf` lines; empty: keep the file as it is.
    pub pg_hba: Vec<String>,
    pub superuser: Credentials,
    pub replication: Credentials,
    pub rewind: Option<Credentials>,
    /// Where to write a pgpass file for libpq tools (pg_basebackup, pg_rewind).
    pub pgpass: PathBuf,
    /// e.g. `["--encoding=UTF8", "--data-checksums"]`.
    pub initdb_args: Vec<String>,
    /// Extra `pg_basebackup` options.
    pub basebackup_args: Vec<String>,
    /// Bound for waiting on start (and the default for other control commands).
    pub pg_ctl_timeout: Duration,
}

impl PgSettings {
    /// Path of a binary in `bin_dir`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Credentials `pg_rewind` connects with: the rewind user, else the superuser.
    pub fn rewind_credentials(&self) -> &Credentials {
        self.rewind.as_ref().unwrap_or(&self.superuser)
    }
}

/// How to start the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    Primary,
    Replica {
        primary_conninfo: Option<String>,
        slot: Option<String>,
    },
}

/// Shutdown mode; the signal sent to the postmaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM
    Smart,
    /// SIGINT
    Fast,
    /// SIGQUIT
    Immediate,
}

impl StopMode {
    pub fn signal(self) -> libc::c_int {
        match self {
            StopMode::Smart => libc::SIGTERM,
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        }
    }
}

/// One row of `pg_stat_replication`, the fields Patroni publishes (`replication` in the
/// status document, in this order).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicationRow {
    pub usename: String,
    pub application_name: String,
    /// `client_addr` as text; null for a walsender on a Unix socket.
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, ...
    pub state: String,
    /// `sync`, `async`, `quorum` or `potential`.
    pub sync_state: String,
    pub sync_priority: i32,
    /// The position up to which this standby acknowledges commits under the primary's
    /// `synchronous_commit` (write, flush or replay LSN); not in the status document.
    #[serde(skip)]
    pub ack_lsn: Option<u64>,
}

/// One bounded query round: everything the status document and the HA engine need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgStatus {
    pub in_recovery: bool,
    /// e.g. `150018`.
    pub server_version: u32,
    /// `"2026-11-24 05:13:38.632305+00:00"`.
    pub postmaster_start_time: String,
    /// Primary: from the current WAL file name; replica: received timeline, else the
    /// timeline of the last checkpoint.
    pub timeline: u64,
    /// Primary: `pg_current_wal_flush_lsn()`; replica: `max(receive, replay)`.
    pub wal_position: u64,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replayed_timestamp: Option<String>,
    pub replay_paused: bool,
    /// `"streaming"` or `"in archive recovery"` (replica only).
    pub replication_state: Option<String>,
    pub received_timeline: Option<u64>,
    pub replication: Vec<ReplicationRow>,
    /// Primary: `synchronous_standby_names` in force.
    pub synchronous_standby_names: Option<String>,
    pub pending_restart: bool,
    pub sysid: String,
}
