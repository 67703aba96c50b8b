//! A simulated PostgreSQL server: just enough state to judge the safety invariants and to
//! answer what the shell asks of it (`endpoints::SimPg`).

use std::time::Duration;

use pgwarden::ha::DataDir;
use pgwarden::postgres::{Controldata, DataDirState, PgStatus};

/// What the postmaster is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Down,
    Starting {
        as_primary: bool,
    },
    Replica,
    Primary,
    /// Shutting down; `writable` while a former primary still accepts commits.
    Stopping {
        writable: bool,
        was_replica: bool,
    },
}

#[derive(Debug, Clone)]
pub struct FakePg {
    pub data: DataDir,
    pub run: Run,
    pub wal: u64,
    pub timeline: u64,
    /// The member `primary_conninfo` points at, as last configured.
    pub upstream: Option<String>,
    /// `standby.signal` is in the data directory.
    pub standby_signal: bool,
    /// While an immediate stop is under way: when it completes. Another kill cannot delay it.
    pub killed_by: Option<Duration>,
    /// Receiving WAL from a running upstream (set by the world at every tick).
    pub streaming: bool,
    /// Bumped on every transition, so that a step of a task overtaken by another (a crash, a
    /// kill) is recognised and fails.
    pub epoch: u64,
    /// Until then the postmaster ignores a fast stop (`Fault::StubbornStop`).
    pub stubborn_until: Duration,
    /// `synchronous_standby_names` in its configuration.
    pub sync_names: String,
    /// The WAL branch its position is on (see `replication`).
    pub branch: usize,
}

impl FakePg {
    pub fn new() -> Self {
        FakePg {
            data: DataDir::Empty,
            run: Run::Down,
            wal: 0,
            timeline: 1,
            upstream: None,
            standby_signal: false,
            killed_by: None,
            streaming: false,
            epoch: 0,
            stubborn_until: Duration::ZERO,
            sync_names: String::new(),
            branch: 0,
        }
    }

    /// Accepts commits right now.
    pub fn writable(&self) -> bool {
        matches!(
            self.run,
            Run::Primary | Run::Stopping { writable: true, .. }
        )
    }

    /// Up and answering queries.
    pub fn running(&self) -> bool {
        matches!(self.run, Run::Primary | Run::Replica)
    }

    /// A postmaster process exists.
    pub fn alive(&self) -> bool {
        self.run != Run::Down
    }

    pub fn sysid(&self) -> Option<&str> {
        match &self.data {
            DataDir::Ready { sysid, .. } => Some(sysid),
            _ => None,
        }
    }

    /// What `pg_controldata` says.
    pub fn data_dir_state(&self) -> DataDirState {
        match &self.data {
            DataDir::Empty => DataDirState::Empty,
            DataDir::Invalid(r) => DataDirState::Invalid(r.clone()),
            DataDir::Ready { sysid, was_primary } => DataDirState::Initialized(Controldata {
                sysid: sysid.clone(),
                cluster_state: if *was_primary {
                    "in production"
                } else {
                    "in archive recovery"
                }
                .into(),
                timeline: self.timeline,
                checkpoint_lsn: self.wal,
                min_recovery_end_lsn: 0,
                data_checksums: false,
                wal_log_hints: true,
            }),
        }
    }

    /// The status query's answer; `None` while the server refuses connections. A primary's
    /// WAL senders are the world's to say (`World::standbys_of`).
    pub fn status(&self) -> Option<PgStatus> {
        let in_recovery = match self.run {
            Run::Primary => false,
            Run::Replica => true,
            _ => return None,
        };
        Some(PgStatus {
            in_recovery,
            server_version: 150_000,
            timeline: self.timeline,
            wal_position: self.wal,
            receive_lsn: in_recovery.then_some(self.wal),
            replay_lsn: in_recovery.then_some(self.wal),
            replication_state: in_recovery.then(|| {
                if self.streaming {
                    "streaming".into()
                } else {
                    "in archive recovery".into()
                }
            }),
            sysid: self.sysid().unwrap_or_default().into(),
            synchronous_standby_names: (!in_recovery).then(|| self.sync_names.clone()),
            ..PgStatus::default()
        })
    }

    /// A transition that overtakes whatever was under way.
    pub fn set(&mut self, run: Run) {
        self.epoch += 1;
        self.run = run;
        if run == Run::Down {
            self.killed_by = None;
        }
    }

    /// The state a stop starts from.
    pub fn stopping(&self) -> Run {
        Run::Stopping {
            writable: self.writable() || self.run == Run::Starting { as_primary: true },
            was_replica: matches!(self.run, Run::Replica | Run::Starting { as_primary: false })
                || self.run
                    == (Run::Stopping {
                        writable: false,
                        was_replica: true,
                    }),
        }
    }
}
