//! What a fault schedule is made of, and how a seed makes one: every choice the nemesis makes
//! (the mode, the faults, whom they hit, how long they last, which operation runs in the
//! middle) is drawn here, from the seed alone, before the cluster starts. A failing schedule
//! replays from its seed; what the real system does with it may differ in timing, never in
//! what was asked of it.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The replication mode a schedule's cluster runs in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Async,
    /// `synchronous_mode: true`, `synchronous_mode_strict: true`.
    Strict,
    /// `synchronous_mode: quorum`, `synchronous_mode_strict: true` (pgwarden only: Patroni
    /// 3.0.2 has no quorum mode).
    Quorum,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Strict => "strict",
            Mode::Quorum => "quorum",
        }
    }

    /// The lines the mode adds under `bootstrap.dcs`.
    pub fn bootstrap_dcs(self) -> &'static str {
        match self {
            Mode::Async => "",
            Mode::Strict => "    synchronous_mode: true\n    synchronous_mode_strict: true\n",
            Mode::Quorum => "    synchronous_mode: quorum\n    synchronous_mode_strict: true\n",
        }
    }

    /// Acknowledged writes must all survive.
    pub fn loses_nothing(self) -> bool {
        self != Mode::Async
    }
}

/// Whom a fault hits, resolved when it starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    /// Whichever member accepts writes then.
    Primary,
    /// The `k`th replica (modulo their number) in name order.
    Replica(usize),
    /// The standby the primary reports synchronous (never drawn by a seed: for the schedules
    /// of regression tests).
    SyncStandby,
}

/// One fault. Held for the round's duration and healed at its end; those marked one-shot act
/// once, at the start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// Every packet between the member and the store dropped (its proxy's port).
    CutFromStore(Target),
    /// Only the store's answers to the member dropped (one-way).
    StoreRepliesLost(Target),
    /// Only the member's requests to the store dropped (one-way).
    StoreRequestsLost(Target),
    /// Every packet between the member and the other members dropped.
    CutFromPeers(Target),
    /// Every packet dropped but the clients' own to its PostgreSQL.
    Isolated(Target),
    /// The link to the store cut and healed in turn, every `period_ms`.
    FlappingStoreLink(Target, u64),
    /// `latency_ms` each way, ± `jitter_ms`, on the link to the store.
    SlowStore(Target, u64, u64),
    /// The link to the store limited to `kb_per_s` each way.
    NarrowStoreLink(Target, u64),
    /// The agent killed with -9 (started again at the heal).
    KillAgent(Target),
    /// The postmaster killed with -9 (one-shot: the agent starts it again).
    KillPostmaster(Target),
    /// The agent frozen with SIGSTOP, then SIGCONT at the heal.
    FreezeAgent(Target),
    /// Nobody reads the agent's stdout and stderr: its writes to them block.
    StallOutput(Target),
    /// The store's server (etcd, or the API server) killed, started again at the heal.
    StoreDown,
    /// The store's server frozen with SIGSTOP.
    StoreFrozen,
    /// The leader lock deleted by hand (one-shot).
    DeleteLeaderLock,
    /// The member's wall clock moved by this many seconds (its monotonic clock runs on).
    ClockSkew(Target, i64),
    /// The filesystem of the member's data directory, pg_wal included, filled to the last
    /// byte (emptied at the heal).
    DiskFull(Target),
    /// ttl, loop_wait and retry_timeout changed with `PATCH /config` (restored at the heal).
    RetimeCluster {
        ttl: u64,
        loop_wait: u64,
        retry_timeout: u64,
    },
}

/// An operation run through the REST API while the faults hold.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Operation {
    Switchover,
    /// A failover to a replica (`POST /failover` with a candidate).
    Failover,
    /// Pause, and resume at the heal.
    Pause,
    /// `POST /restart` of a member.
    Restart(Target),
}

/// One round: faults together, an operation maybe, held, then healed and checked.
#[derive(Clone, Debug)]
pub struct Round {
    pub faults: Vec<Fault>,
    pub operation: Option<Operation>,
    /// From the first fault to the heal.
    pub hold_ms: u64,
    /// When the operation runs, from the first fault.
    pub operation_at_ms: u64,
}

impl Schedule {
    /// Some round moves a member's clock: the members must start with clock files.
    pub fn skews_clocks(&self) -> bool {
        self.has(|f| matches!(f, Fault::ClockSkew(..)))
    }

    /// Some round fills a disk: the members' data directories must be volumes of their own.
    pub fn fills_disks(&self) -> bool {
        self.has(|f| matches!(f, Fault::DiskFull(..)))
    }

    fn has(&self, what: impl Fn(&Fault) -> bool) -> bool {
        self.rounds.iter().any(|r| r.faults.iter().any(&what))
    }
}

impl Round {
    /// The scenario's name in the report: its faults and operation.
    pub fn scenario(&self) -> String {
        let mut parts: Vec<String> = self.faults.iter().map(fault_name).collect();
        if let Some(op) = self.operation {
            parts.push(format!("op:{}", operation_name(op)));
        }
        parts.join(" + ")
    }
}

fn target_name(t: &Target) -> &'static str {
    match t {
        Target::Primary => "primary",
        Target::Replica(_) => "replica",
        Target::SyncStandby => "sync standby",
    }
}

fn fault_name(f: &Fault) -> String {
    use Fault::*;
    match f {
        CutFromStore(t) => format!("{} cut from store", target_name(t)),
        StoreRepliesLost(t) => format!("{} loses store replies", target_name(t)),
        StoreRequestsLost(t) => format!("{} loses store requests", target_name(t)),
        CutFromPeers(t) => format!("{} cut from peers", target_name(t)),
        Isolated(t) => format!("{} isolated", target_name(t)),
        FlappingStoreLink(t, _) => format!("{} store link flapping", target_name(t)),
        SlowStore(t, l, _) => format!("{} store latency {l} ms", target_name(t)),
        NarrowStoreLink(t, k) => format!("{} store link {k} KB/s", target_name(t)),
        KillAgent(t) => format!("{} agent kill -9", target_name(t)),
        KillPostmaster(t) => format!("{} postmaster kill -9", target_name(t)),
        FreezeAgent(t) => format!("{} agent frozen", target_name(t)),
        StallOutput(t) => format!("{} stdout blocked", target_name(t)),
        ClockSkew(t, s) => format!("{} clock {s:+} s", target_name(t)),
        DiskFull(t) => format!("{} disk full", target_name(t)),
        StoreDown => "store killed".into(),
        StoreFrozen => "store frozen".into(),
        DeleteLeaderLock => "leader lock deleted".into(),
        RetimeCluster { ttl, .. } => format!("ttl changed to {ttl}"),
    }
}

fn operation_name(o: Operation) -> String {
    match o {
        Operation::Switchover => "switchover".into(),
        Operation::Failover => "failover".into(),
        Operation::Pause => "pause".into(),
        Operation::Restart(t) => format!("restart {}", target_name(&t)),
    }
}

/// A schedule: its seed, mode and rounds.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub mode: Mode,
    pub rounds: Vec<Round>,
}

/// Timings the schedule is drawn for: the cluster's ttl in seconds.
pub fn generate(seed: u64, rounds: usize, ttl: u64, modes: &[Mode]) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let mode = modes[rng.random_range(0..modes.len())];
    let rounds = (0..rounds).map(|_| round(&mut rng, ttl)).collect();
    Schedule { seed, mode, rounds }
}

fn target(rng: &mut StdRng) -> Target {
    // The primary is where faults matter most: two thirds of them hit it.
    if rng.random_range(0..3) < 2 {
        Target::Primary
    } else {
        Target::Replica(rng.random_range(0..2))
    }
}

fn fault(rng: &mut StdRng, ttl: u64) -> Fault {
    use Fault::*;
    let t = target(rng);
    match rng.random_range(0..18) {
        0 => CutFromStore(t),
        1 => StoreRepliesLost(t),
        2 => StoreRequestsLost(t),
        3 => CutFromPeers(t),
        4 => Isolated(t),
        5 => FlappingStoreLink(t, rng.random_range(300..2000)),
        6 => {
            let latency = [100, 300, 1000, 2500][rng.random_range(0..4)];
            SlowStore(t, latency, latency / 2)
        }
        7 => NarrowStoreLink(t, [1, 4, 16][rng.random_range(0..3)]),
        8 => KillAgent(t),
        9 => KillPostmaster(t),
        10 => FreezeAgent(t),
        11 => StallOutput(t),
        12 => StoreDown,
        13 => StoreFrozen,
        14 => DeleteLeaderLock,
        15 => ClockSkew(t, [-300, -120, 120, 300][rng.random_range(0..4)]),
        16 => DiskFull(t),
        _ => {
            // Up or down, always a valid combination (ttl >= loop_wait + 2 retry_timeout).
            let ttl = [ttl / 2, ttl, ttl * 2][rng.random_range(0..3)].max(4);
            let loop_wait = rng.random_range(1..=(ttl / 4).max(1));
            let retry_timeout = rng.random_range(1..=((ttl - loop_wait) / 2).max(1));
            RetimeCluster {
                ttl,
                loop_wait,
                retry_timeout,
            }
        }
    }
}

fn round(rng: &mut StdRng, ttl: u64) -> Round {
    // One fault, or a mix of two (a third of the rounds).
    let n = if rng.random_range(0..3) == 0 { 2 } else { 1 };
    let mut faults: Vec<Fault> = Vec::new();
    while faults.len() < n {
        let f = fault(rng, ttl);
        // One store-wide fault and one retiming a round: two would only overwrite each other.
        let store_wide = |f: &Fault| matches!(f, Fault::StoreDown | Fault::StoreFrozen);
        let retime = |f: &Fault| matches!(f, Fault::RetimeCluster { .. });
        if faults
            .iter()
            .any(|g| g == &f || (store_wide(g) && store_wide(&f)) || (retime(g) && retime(&f)))
        {
            continue;
        }
        faults.push(f);
    }
    let operation = match rng.random_range(0..8) {
        0 => Some(Operation::Switchover),
        1 => Some(Operation::Failover),
        2 => Some(Operation::Pause),
        3 => Some(Operation::Restart(target(rng))),
        _ => None,
    };
    let hold_ms = rng.random_range(ttl * 500..ttl * 3000);
    let operation_at_ms = rng.random_range(0..hold_ms);
    Round {
        faults,
        operation,
        hold_ms,
        operation_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_makes_the_same_schedule() {
        let modes = [Mode::Async, Mode::Strict, Mode::Quorum];
        let a = generate(42, 5, 8, &modes);
        let b = generate(42, 5, 8, &modes);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let c = generate(43, 5, 8, &modes);
        assert_ne!(format!("{a:?}"), format!("{c:?}"));
    }

    #[test]
    fn retimings_are_valid() {
        for seed in 0..500 {
            for r in generate(seed, 4, 8, &[Mode::Async]).rounds {
                for f in r.faults {
                    if let Fault::RetimeCluster {
                        ttl,
                        loop_wait,
                        retry_timeout,
                    } = f
                    {
                        assert!(ttl >= loop_wait + 2 * retry_timeout, "{f:?}");
                    }
                }
            }
        }
    }
}
