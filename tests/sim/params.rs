//! A schedule: the cluster's shape and timings, and the faults to inject, drawn from a seed.

use std::time::Duration;

use pgwarden::config::SyncMode;
use pgwarden::ha::Request;
use rand::RngExt;
use rand::rngs::StdRng;

/// The longest an immediate stop takes in the simulation.
pub const STOP_MAX: Duration = Duration::from_millis(300);
/// The longest a member's agent may stall (scheduler lateness). Longer freezes need a
/// hardware watchdog.
pub const STALL_MAX: Duration = Duration::from_millis(300);
/// PostgreSQL's `wal_sender_timeout` (its default): how long a primary keeps the WAL sender
/// of a standby it no longer hears from.
pub const WAL_SENDER_TIMEOUT: Duration = Duration::from_secs(60);
/// `postgresql.pg_ctl_timeout` of every member: how long a stop may take before it fails.
pub const PG_CTL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub enum Fault {
    /// The agent is killed (PostgreSQL dies with it) and started again later.
    CrashMember {
        who: usize,
        down_for: Duration,
    },
    /// The agent is asked to stop (SIGTERM), and started again later.
    Shutdown {
        who: usize,
        down_for: Duration,
    },
    CrashPg {
        who: usize,
    },
    CutFromStore {
        who: usize,
        for_: Duration,
    },
    CutFromPeers {
        who: usize,
        for_: Duration,
    },
    Isolate {
        who: usize,
        for_: Duration,
    },
    StoreOutage {
        for_: Duration,
    },
    Stall {
        who: usize,
        for_: Duration,
    },
    Switchover {
        to: usize,
        /// Scheduled this long after the request (`scheduled_at` on the wall clock).
        after: Option<Duration>,
    },
    /// `PATCH /config` of the timings: members learn it when they next read the store.
    ChangeTimings {
        timings: Timings,
    },
    /// The leader key deleted by hand.
    DeleteLock,
    /// `pause: true` in the config for a while.
    Pause {
        for_: Duration,
    },
    /// A member's watchdog device breaks for a while (opening it and keepalives fail).
    BreakWatchdog {
        who: usize,
        for_: Duration,
    },
    /// `POST /restart` or `POST /reinitialize` to a member.
    Request {
        who: usize,
        request: Request,
    },
    /// For a while the postmaster ignores the fast-stop signal: a stop fails after
    /// `pg_ctl_timeout` with the server still running.
    StubbornStop {
        who: usize,
        for_: Duration,
    },
    /// The member's clocks (boot time and wall clock) jump ahead, as a machine's do when it
    /// resumes: its timers already set do not move, so its loop is late on its own clock (a
    /// deadline passed is still met by the instant it was planned for).
    ClockJump {
        who: usize,
        by: Duration,
    },
    /// The member's wall clock alone steps (NTP), either way: only what is scheduled by the
    /// wall clock (a switchover) moves with it; leases do not.
    WallStep {
        who: usize,
        by_ms: i64,
    },
}

/// The cluster's timings (dynamic configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
}

impl Timings {
    fn random(rng: &mut StdRng) -> Timings {
        let ttl = Duration::from_secs([5, 10, 30][rng.random_range(0..3)]);
        let loop_wait = Duration::from_secs(rng.random_range(1..=(ttl.as_secs() / 3).max(1)));
        let retry_timeout = ((ttl - loop_wait) / 2)
            .min(Duration::from_secs(10))
            .max(Duration::from_secs(1));
        Timings {
            ttl,
            loop_wait,
            retry_timeout,
        }
    }
}

/// Synchronous replication (the dynamic configuration's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sync {
    pub mode: SyncMode,
    pub strict: bool,
    pub node_count: u32,
}

impl Sync {
    fn random(rng: &mut StdRng) -> Sync {
        Sync {
            mode: [SyncMode::Off, SyncMode::Off, SyncMode::On, SyncMode::Quorum]
                [rng.random_range(0..4)],
            strict: rng.random_bool(0.5),
            node_count: rng.random_range(1..=2),
        }
    }

    /// `synchronous_standby_names` as the configuration renders it (until the core sets it).
    pub fn default_names(&self) -> String {
        match (self.mode, self.strict) {
            (SyncMode::Off, _) | (_, false) => String::new(),
            (_, true) => pgwarden::postgres::sync_names::STRICT_PLACEHOLDER.into(),
        }
    }

    /// The `config` key's fields, each followed by a comma.
    pub fn json(&self) -> String {
        let mode = match self.mode {
            SyncMode::Off => "false",
            SyncMode::On => "true",
            SyncMode::Quorum => "\"quorum\"",
        };
        format!(
            r#""synchronous_mode": {mode}, "synchronous_mode_strict": {}, "synchronous_node_count": {}, "#,
            self.strict, self.node_count
        )
    }

    /// The bootstrap.dcs lines.
    pub fn yaml(&self) -> String {
        let mode = match self.mode {
            SyncMode::Off => "false",
            SyncMode::On => "true",
            SyncMode::Quorum => "quorum",
        };
        format!(
            "    synchronous_mode: {mode}\n    synchronous_mode_strict: {}\n    synchronous_node_count: {}\n",
            self.strict, self.node_count
        )
    }
}

/// One member's tags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tags {
    pub nofailover: bool,
    pub failover_priority: u32,
}

pub struct Params {
    pub members: usize,
    pub timings: Timings,
    /// The longest ttl and loop_wait of the run (timings change mid-run).
    pub max_ttl: Duration,
    pub max_loop_wait: Duration,
    /// The longest retry_timeout of the run: what an inline store call may take.
    pub max_retry_timeout: Duration,
    pub loss: f64,
    pub spike: f64,
    pub fault_phase: Duration,
    pub faults: Vec<(Duration, Fault)>,
    pub quiet_phase: Duration,
    /// Which members run with `watchdog.mode: required`.
    pub watchdog_required: Vec<bool>,
    pub tags: Vec<Tags>,
    /// The lock has Kubernetes' Lease semantics (observer-local expiry, compare-and-set on
    /// the version seen) instead of etcd's (a key bound to a session the store expires).
    pub lease_lock: bool,
    pub sync: Sync,
    /// `failsafe_mode` (drawn last, so that the schedules drawn before it stay as they were).
    pub failsafe: bool,
    /// `primary_start_timeout` in seconds (0: a crashed primary hands over at once).
    pub primary_start_timeout: u64,
    /// `shutdown_handover_timeout` in seconds (0: a member told to stop hands nothing over).
    pub shutdown_handover_timeout: u64,
}

impl Params {
    pub fn random(rng: &mut StdRng) -> Params {
        let timings = Timings::random(rng);
        let (mut max_ttl, mut max_loop_wait) = (timings.ttl, timings.loop_wait);
        let mut max_retry_timeout = timings.retry_timeout;
        let members = rng.random_range(2..=4);
        let fault_phase = Duration::from_secs(rng.random_range(30..150));
        let nfaults = rng.random_range(0..10);
        let mut faults = Vec::new();
        for _ in 0..nfaults {
            let at = Duration::from_millis(rng.random_range(5_000..fault_phase.as_millis() as u64));
            let who = rng.random_range(0..members);
            let d =
                Duration::from_millis(rng.random_range(200..(timings.ttl.as_millis() as u64 * 3)));
            let f = match rng.random_range(0..19) {
                0 => Fault::CrashMember { who, down_for: d },
                1 => Fault::CrashPg { who },
                2 => Fault::CutFromStore { who, for_: d },
                3 => Fault::CutFromPeers { who, for_: d },
                4 => Fault::Isolate { who, for_: d },
                5 => Fault::StoreOutage { for_: d },
                6 => Fault::Stall {
                    who,
                    for_: Duration::from_millis(rng.random_range(1..=STALL_MAX.as_millis() as u64)),
                },
                9 => {
                    let t = Timings::random(rng);
                    max_ttl = max_ttl.max(t.ttl);
                    max_loop_wait = max_loop_wait.max(t.loop_wait);
                    max_retry_timeout = max_retry_timeout.max(t.retry_timeout);
                    Fault::ChangeTimings { timings: t }
                }
                10 => Fault::DeleteLock,
                11 => Fault::Pause { for_: d },
                12 => Fault::BreakWatchdog { who, for_: d },
                13 => Fault::Request {
                    who,
                    request: Request::Restart,
                },
                14 => Fault::Request {
                    who,
                    request: Request::Reinitialize,
                },
                15 => Fault::Shutdown { who, down_for: d },
                16 => Fault::StubbornStop { who, for_: d },
                17 => Fault::ClockJump { who, by: d },
                18 => Fault::WallStep {
                    who,
                    by_ms: rng.random_range(-120_000..120_000),
                },
                8 => Fault::Switchover {
                    to: who,
                    after: Some(d),
                },
                _ => Fault::Switchover {
                    to: who,
                    after: None,
                },
            };
            faults.push((at, f));
        }
        faults.sort_by_key(|(at, _)| *at);
        // Some members may not be promoted or rank lower; one at least can always lead.
        let mut tags: Vec<Tags> = (0..members)
            .map(|_| Tags {
                nofailover: rng.random_bool(0.15),
                failover_priority: [1, 1, 1, 2, 0][rng.random_range(0..5)],
            })
            .collect();
        if tags
            .iter()
            .all(|t| t.nofailover || t.failover_priority == 0)
        {
            tags[0] = Tags {
                nofailover: false,
                failover_priority: 1,
            };
        }
        Params {
            members,
            timings,
            max_ttl,
            max_loop_wait,
            max_retry_timeout,
            loss: [0.0, 0.02, 0.1][rng.random_range(0..3)],
            spike: [0.0, 0.02][rng.random_range(0..2)],
            fault_phase,
            faults,
            quiet_phase: max_ttl * 2 + max_loop_wait + Duration::from_secs(30),
            watchdog_required: (0..members).map(|_| rng.random_bool(0.3)).collect(),
            tags,
            lease_lock: rng.random_bool(0.5),
            sync: Sync::random(rng),
            failsafe: rng.random_bool(0.5),
            primary_start_timeout: [0, 3, 300, 300][rng.random_range(0..4)],
            shutdown_handover_timeout: [0, 3, 10, 10][rng.random_range(0..4)],
        }
    }
}
