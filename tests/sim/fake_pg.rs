//! A simulated PostgreSQL: just enough state to judge the safety invariants.

use pgwarden::ha::DataDir;

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
    pub upstream: Option<String>,
    /// While an immediate stop is under way: when it completes. Another kill cannot delay it.
    pub killed_by: Option<std::time::Duration>,
    /// Receiving WAL from a running upstream (set by the world at every tick).
    pub streaming: bool,
    /// Bumped on every transition, so a stale completion is recognised and dropped.
    pub epoch: u64,
}

impl FakePg {
    pub fn new() -> Self {
        FakePg {
            data: DataDir::Empty,
            run: Run::Down,
            wal: 0,
            timeline: 1,
            upstream: None,
            killed_by: None,
            streaming: false,
            epoch: 0,
        }
    }

    /// Accepts commits right now.
    pub fn writable(&self) -> bool {
        matches!(
            self.run,
            Run::Primary | Run::Stopping { writable: true, .. }
        )
    }

    pub fn running(&self) -> bool {
        matches!(self.run, Run::Primary | Run::Replica)
    }

    /// What the shell would observe.
    pub fn facts(&self) -> pgwarden::ha::PgFacts {
        let (up, in_recovery) = match self.run {
            Run::Down => (false, None),
            // Started with standby.signal: cannot be writable until promoted.
            Run::Starting { as_primary: false } => (true, Some(true)),
            Run::Starting { as_primary: true } => (true, None),
            Run::Replica => (true, Some(true)),
            Run::Primary => (true, Some(false)),
            Run::Stopping {
                writable,
                was_replica,
            } => (
                true,
                if was_replica {
                    Some(true)
                } else {
                    Some(!writable)
                },
            ),
        };
        pgwarden::ha::PgFacts {
            data: self.data.clone(),
            up,
            in_recovery,
            timeline: Some(self.timeline),
            wal_position: self.wal,
            upstream: self.upstream.clone(),
            streaming: self.run == Run::Replica && self.streaming,
            supervised: true,
        }
    }

    pub fn crash(&mut self) {
        self.epoch += 1;
        self.run = Run::Down;
    }
}
