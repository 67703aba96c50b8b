//! The simulated world: members (an `HaCore` and a `FakePg` each), one in-memory store, a
//! seeded random source, a virtual clock and an event queue. Every step jumps to the next
//! event, applies it, and checks the safety invariants of ha-safety.md.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use pgwarden::dcs::mem::{LeaseId, MemStore};
use pgwarden::dcs::{Failover, Member, Status};
use pgwarden::ha::{
    Action, ActionId, Countdown, DataDir, HaCore, Identity, Input, MonoTime, Observation, Outcome,
    PeerFacts, Policy, Request, RequestId, WatchdogState,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::fake_pg::{FakePg, Run};

const MS: Duration = Duration::from_millis(1);

/// The wall clock at simulated time `t` (every member's, as if synchronised by NTP).
fn wall_clock(t: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::UNIX_EPOCH
        + chrono::Duration::from_std(t).expect("in range")
        + chrono::Duration::days(20_000)
}
/// The longest an immediate stop takes in the simulation.
const STOP_MAX: Duration = Duration::from_millis(300);
/// The longest a member's agent may stall (scheduler lateness). Longer freezes need a
/// hardware watchdog, which is a later issue.
const STALL_MAX: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub enum Fault {
    CrashMember {
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

#[derive(Debug, Clone)]
enum Ev {
    Wake(usize, u64),
    /// A DCS request reaches the store.
    StoreOp {
        who: usize,
        inc: u64,
        id: ActionId,
        action: Action,
        sent_at: MonoTime,
        reply_at: Option<Duration>,
    },
    Deliver {
        who: usize,
        inc: u64,
        id: ActionId,
        outcome: Outcome,
    },
    PgDone {
        who: usize,
        epoch: u64,
        to: Run,
        task: Option<ActionId>,
        inc: u64,
    },
    TaskDone {
        who: usize,
        inc: u64,
        id: ActionId,
        ok: bool,
        effect: TaskEffect,
    },
    Fault(Fault),
    Heal(HealWhat),
    /// The stop of a restart is done: start again.
    Restarted {
        who: usize,
        epoch: u64,
        as_primary: bool,
        task: ActionId,
        inc: u64,
    },
    Restart(usize),
    Tick,
}

#[derive(Debug, Clone)]
enum TaskEffect {
    None,
    Clone { from: usize },
    Rewind { from: usize },
    Bootstrap,
    RemoveData,
}

#[derive(Debug, Clone)]
enum HealWhat {
    Store(usize),
    Peers(usize),
    StoreAll,
    Unfreeze,
    Resume,
    Watchdog(usize),
}

pub struct SimMember {
    pub name: String,
    pub core: HaCore,
    pub pg: FakePg,
    /// Local clock rate (drift).
    rate: f64,
    lease: Option<LeaseId>,
    /// Incarnation of the agent: bumped by a crash, so stale events are dropped.
    inc: u64,
    alive: bool,
    store_cut: u32,
    peers_cut: u32,
    frozen_until: Duration,
    /// Inline operations outstanding (the shell is sequential).
    busy: usize,
    wake_pending: bool,
    next_wake: Option<Duration>,
    last_member_json: String,
    /// The timings and pause flag this member last read from the store.
    timings: Timings,
    paused: bool,
    /// Real time of the last lease deadline its core reported (for the deadline invariant).
    deadline_real: Option<Duration>,
    /// `watchdog.mode: required`, on a device its fence process opens while the lock is held.
    watchdog_required: bool,
    /// Breaks of its device in force, and since when it may not be writable for that reason
    /// (the break, or its last observation while paused, when the watchdog does not count).
    watchdog_broken: u32,
    watchdog_broken_since: Option<Duration>,
    /// Its fence is armed (the core holds a lease): the device is open, or failing.
    fence_armed: bool,
}

pub struct Params {
    pub members: usize,
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
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
}

impl Params {
    pub fn random(rng: &mut StdRng) -> Params {
        let Timings {
            ttl,
            loop_wait,
            retry_timeout,
        } = Timings::random(rng);
        let (mut max_ttl, mut max_loop_wait) = (ttl, loop_wait);
        let mut max_retry_timeout = retry_timeout;
        let members = rng.random_range(2..=4);
        let fault_phase = Duration::from_secs(rng.random_range(30..150));
        let nfaults = rng.random_range(0..10);
        let mut faults = Vec::new();
        for _ in 0..nfaults {
            let at = Duration::from_millis(rng.random_range(5_000..fault_phase.as_millis() as u64));
            let who = rng.random_range(0..members);
            let d = Duration::from_millis(rng.random_range(200..(ttl.as_millis() as u64 * 3)));
            let f = match rng.random_range(0..15) {
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
                    let timings = Timings::random(rng);
                    max_ttl = max_ttl.max(timings.ttl);
                    max_loop_wait = max_loop_wait.max(timings.loop_wait);
                    max_retry_timeout = max_retry_timeout.max(timings.retry_timeout);
                    Fault::ChangeTimings { timings }
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
        Params {
            members,
            ttl,
            loop_wait,
            retry_timeout,
            max_ttl,
            max_loop_wait,
            max_retry_timeout,
            loss: [0.0, 0.02, 0.1][rng.random_range(0..3)],
            spike: [0.0, 0.02][rng.random_range(0..2)],
            fault_phase,
            faults,
            quiet_phase: max_ttl * 2 + max_loop_wait + Duration::from_secs(30),
            watchdog_required: (0..members).map(|_| rng.random_bool(0.3)).collect(),
        }
    }
}

pub struct World {
    pub now: Duration,
    /// The timings and pause flag in the store's `config`.
    timings: Timings,
    pause: u32,
    /// The holder whose lock was deleted by hand, until a lock exists again: it cannot know
    /// at that instant, so it is held to "never two writers" and its deadline only.
    deleted_holder: Option<String>,
    /// The last leader key deleted while bound to a lease (by hand or by a release): its
    /// holder, that lease, when, and the holder's ttl. See `ClusterView::vanished_leader`.
    vanished: Option<(String, LeaseId, Duration, Duration)>,
    rng: StdRng,
    pub store: MemStore,
    store_down: u32,
    pub members: Vec<SimMember>,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Ev>>,
    seq: u64,
    params: Params,
    pub trace: Vec<String>,
    pub verbose: bool,
    /// A broken invariant found while carrying out an action (reported after the event).
    violation: Option<String>,
    /// Quiet phase: no loss, no spikes, no faults.
    quiet: bool,
    pub steps: u64,
}

impl World {
    pub fn new(seed: u64, params: Params) -> World {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let members = (0..params.members)
            .map(|i| {
                let name = format!("m{i}");
                SimMember {
                    core: HaCore::new(identity(&name)),
                    name,
                    pg: FakePg::new(),
                    rate: 1.0 + rng.random_range(-0.005..0.005),
                    lease: None,
                    inc: 0,
                    alive: true,
                    store_cut: 0,
                    peers_cut: 0,
                    frozen_until: Duration::ZERO,
                    busy: 0,
                    wake_pending: false,
                    next_wake: None,
                    last_member_json: String::new(),
                    timings: Timings {
                        ttl: params.ttl,
                        loop_wait: params.loop_wait,
                        retry_timeout: params.retry_timeout,
                    },
                    paused: false,
                    deadline_real: None,
                    watchdog_required: params.watchdog_required[i],
                    watchdog_broken: 0,
                    watchdog_broken_since: None,
                    fence_armed: false,
                }
            })
            .collect();
        let mut w = World {
            now: Duration::ZERO,
            timings: Timings {
                ttl: params.ttl,
                loop_wait: params.loop_wait,
                retry_timeout: params.retry_timeout,
            },
            pause: 0,
            deleted_holder: None,
            vanished: None,
            rng,
            store: MemStore::new(),
            store_down: 0,
            members,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            seq: 0,
            params,
            trace: Vec::new(),
            verbose: false,
            violation: None,
            quiet: false,
            steps: 0,
        };
        for i in 0..w.members.len() {
            let at = Duration::from_millis(w.rng.random_range(0..500));
            w.schedule(at, Ev::Wake(i, 0));
        }
        let faults = w.params.faults.clone();
        for (at, f) in faults {
            w.schedule(at, Ev::Fault(f));
        }
        w.schedule(Duration::ZERO, Ev::Tick);
        w
    }

    /// The policy member `who` works with: what it last read from the store.
    fn policy(&self, who: usize) -> Policy {
        let m = &self.members[who];
        Policy {
            ttl: m.timings.ttl,
            loop_wait: m.timings.loop_wait,
            retry_timeout: m.timings.retry_timeout,
            maximum_lag_on_failover: 1 << 20,
            use_pg_rewind: true,
            remove_data_directory_on_rewind_failure: false,
            pause: m.paused,
            use_slots: true,
            safety_margin: Policy::default_margin(m.timings.ttl),
        }
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((at, self.seq, self.events.len() - 1)));
    }

    fn local(&self, who: usize) -> MonoTime {
        MonoTime(self.now.mul_f64(self.members[who].rate))
    }

    fn real_of(&self, who: usize, t: MonoTime) -> Duration {
        t.0.div_f64(self.members[who].rate)
    }

    fn log(&mut self, s: String) {
        if self.verbose {
            eprintln!("{:>10.3} {s}", self.now.as_secs_f64());
        }
        self.trace.push(format!("{:?} {s}", self.now));
    }

    fn latency(&mut self) -> Option<Duration> {
        if !self.quiet && self.rng.random_bool(self.params.loss) {
            return None;
        }
        if !self.quiet && self.rng.random_bool(self.params.spike) {
            return Some(Duration::from_millis(self.rng.random_range(500..3000)));
        }
        Some(Duration::from_micros(self.rng.random_range(500..20_000)))
    }

    fn reaches_store(&self, who: usize) -> bool {
        self.store_down == 0 && self.members[who].store_cut == 0
    }

    fn peers_linked(&self, a: usize, b: usize) -> bool {
        self.members[a].peers_cut == 0 && self.members[b].peers_cut == 0
    }

    /// Runs until the end of the quiet phase; an error names the broken invariant.
    pub fn run(&mut self) -> Result<(), String> {
        let heal_at = self.params.fault_phase + self.params.max_ttl * 3;
        let end = heal_at + self.params.quiet_phase;
        let mut leader_seen_after_heal = None;
        while let Some(Reverse((at, _, idx))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            self.steps += 1;
            if self.steps > 5_000_000 {
                return Err("step budget exhausted (livelock?)".into());
            }
            if !self.quiet && self.now >= heal_at {
                self.quiet = true;
                self.pause = 0;
                self.log("quiet phase: every fault healed".into());
            }
            let Some(ev) = self.events[idx].take() else {
                continue;
            };
            self.apply(ev)?;
            self.check_safety()?;
            if self.quiet && leader_seen_after_heal.is_none() {
                let holder = self.store.get("leader", self.now);
                let writable = self.members.iter().any(|m| m.pg.writable());
                if holder.is_some() && writable {
                    leader_seen_after_heal = Some(self.now);
                }
            }
        }
        // Liveness: with everything healed and connected, a leader that takes writes exists
        // within ttl + loop_wait (plus the latency of promotion and of probing peers).
        let bound = self.params.max_ttl + self.params.max_loop_wait + Duration::from_secs(5);
        match leader_seen_after_heal {
            Some(t) if t <= heal_at + bound => Ok(()),
            Some(t) => Err(format!(
                "liveness: a writable leader only {:.1}s after healing (bound {:.1}s)",
                (t - heal_at).as_secs_f64(),
                bound.as_secs_f64()
            )),
            None => Err(format!(
                "liveness: no writable leader after healing; {}",
                self.describe()
            )),
        }
    }

    pub fn describe(&mut self) -> String {
        let holder = self.store.get("leader", self.now);
        let mut s = format!("leader key {holder:?};");
        for m in &self.members {
            s += &format!(
                " {}: alive={} pg={:?} data={:?} msg={:?};",
                m.name,
                m.alive,
                m.pg.run,
                m.pg.data,
                m.core.message()
            );
        }
        s
    }

    /// A leader's graceful stop is a switchover's: never before the time it was scheduled for.
    fn check_not_early(&mut self, who: usize) {
        let name = &self.members[who].name;
        if self.store.get("leader", self.now).as_deref() != Some(name.as_str()) {
            return;
        }
        let at = self
            .store
            .view(self.now)
            .failover
            .and_then(|f| f.value.scheduled_at);
        if let Some(at) = at
            && let Countdown::In(d) = pgwarden::agent::countdown(Some(&at), wall_clock(self.now))
            && !d.is_zero()
        {
            self.violation = Some(format!(
                "{name} hands over at {:?}, {d:?} before the switchover scheduled at {at}",
                self.now
            ));
        }
    }

    fn check_safety(&mut self) -> Result<(), String> {
        if let Some(v) = self.violation.take() {
            return Err(v);
        }
        let writable: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].pg.writable())
            .collect();
        // A holder whose lock was deleted by hand is exempt from "writable only as the store's
        // holder" until it has stopped (it learns of the deletion some time later).
        // (Its acquisition may even be answered after the deletion: it stays exempt until a lock
        // exists again and it is not writable; "never two writers" holds throughout.)
        let lock_exists = self.store.get("leader", self.now).is_some();
        if let Some(d) = &self.deleted_holder
            && lock_exists
            && self
                .members
                .iter()
                .any(|m| m.name == *d && !m.pg.writable())
        {
            self.deleted_holder = None;
        }
        if writable.len() > 1 {
            return Err(format!(
                "two writable primaries at once: {writable:?}; {}",
                self.describe()
            ));
        }
        if let Some(&w) = writable.first() {
            // Never writable past its member's lease deadline by more than what the safety
            // margin budgets: a late wake-up (a stall) and the immediate stop itself.
            match self.members[w].deadline_real {
                Some(d) if self.now <= d + STALL_MAX + STOP_MAX => {}
                d => {
                    let name = self.members[w].name.clone();
                    let now = self.now;
                    return Err(format!(
                        "{name} writable at {now:?}, past its lease deadline {d:?}; {}",
                        self.describe()
                    ));
                }
            }
            // A required watchdog that broke: demoted within the fence's keepalive interval (1 s),
            // an inline store call the shell may be in (bounded by the retry_timeout in force
            // when it was sent: the run's longest), a stall and the stop.
            let m = &self.members[w];
            if m.watchdog_required
                && let Some(t) = m.watchdog_broken_since
                && self.now
                    > t + Duration::from_secs(1)
                        + self.params.max_retry_timeout
                        + STALL_MAX
                        + STOP_MAX
            {
                let (name, now) = (m.name.clone(), self.now);
                return Err(format!(
                    "{name} writable at {now:?} with its required watchdog broken since {t:?}; {}",
                    self.describe()
                ));
            }
            let holder = self.store.get("leader", self.now);
            let name = self.members[w].name.clone();
            let deleted = self.deleted_holder.as_deref() == Some(name.as_str());
            if holder.as_deref() != Some(name.as_str()) && !deleted {
                return Err(format!(
                    "{name} writable while the lock is {holder:?}; {}",
                    self.describe()
                ));
            }
        }
        Ok(())
    }

    fn apply(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Tick => {
                // Clients write to whoever accepts writes; replicas copy from their upstream.
                let positions: Vec<(String, u64, u64, bool)> = self
                    .members
                    .iter()
                    .map(|m| (m.name.clone(), m.pg.wal, m.pg.timeline, m.pg.running()))
                    .collect();
                for i in 0..self.members.len() {
                    if self.members[i].pg.run == Run::Primary {
                        self.members[i].pg.wal += 100;
                        continue;
                    }
                    let mut streaming = false;
                    if self.members[i].pg.run == Run::Replica
                        && let Some(up) = self.members[i].pg.upstream.clone()
                        && let Some(j) = positions.iter().position(|(n, _, _, r)| *n == up && *r)
                        && self.peers_linked(i, j)
                    {
                        let pg = &mut self.members[i].pg;
                        pg.wal = pg.wal.max(positions[j].1);
                        pg.timeline = pg.timeline.max(positions[j].2);
                        streaming = true;
                    }
                    self.members[i].pg.streaming = streaming;
                }
                let before = self.store.revision();
                self.store.expire(self.now);
                if self.store.revision() != before {
                    self.notify_watchers();
                }
                self.schedule(self.now + 50 * MS, Ev::Tick);
            }
            Ev::Wake(who, inc) => self.wake(who, inc),
            Ev::StoreOp {
                who,
                inc,
                id,
                action,
                sent_at,
                reply_at,
            } => {
                let outcome = self.store_op(who, &action, sent_at);
                if let Some(at) = reply_at {
                    self.schedule(
                        at,
                        Ev::Deliver {
                            who,
                            inc,
                            id,
                            outcome,
                        },
                    );
                }
            }
            Ev::Deliver {
                who,
                inc,
                id,
                outcome,
            } => {
                if self.members[who].inc != inc || !self.members[who].alive {
                    return Ok(());
                }
                self.members[who].busy = self.members[who].busy.saturating_sub(1);
                self.feed(who, Input::Completed { id, outcome });
                if self.members[who].busy == 0 && self.members[who].wake_pending {
                    self.members[who].wake_pending = false;
                    let inc = self.members[who].inc;
                    self.schedule(self.now, Ev::Wake(who, inc));
                }
            }
            Ev::PgDone {
                who,
                epoch,
                to,
                task,
                inc,
            } => {
                if self.members[who].pg.epoch != epoch {
                    if let Some(id) = task {
                        self.complete_task(who, inc, id, false);
                    }
                    return Ok(());
                }
                if to == Run::Primary && self.members[who].pg.run == Run::Replica {
                    self.members[who].pg.timeline += 1;
                }
                if to == Run::Primary {
                    self.members[who].pg.data = match &self.members[who].pg.data {
                        DataDir::Ready { sysid, .. } => DataDir::Ready {
                            sysid: sysid.clone(),
                            was_primary: true,
                        },
                        other => other.clone(),
                    };
                }
                self.members[who].pg.run = to;
                self.log(format!("{} postgres now {to:?}", self.members[who].name));
                if let Some(id) = task {
                    self.complete_task(who, inc, id, true);
                }
            }
            Ev::TaskDone {
                who,
                inc,
                id,
                ok,
                effect,
            } => {
                let mut ok = ok;
                if ok {
                    match effect {
                        TaskEffect::None => {}
                        TaskEffect::Bootstrap => {
                            self.members[who].pg.data = DataDir::Ready {
                                sysid: "7000".into(),
                                was_primary: true,
                            };
                        }
                        TaskEffect::RemoveData => {
                            // Never under a running server.
                            if self.members[who].pg.run == Run::Down {
                                self.members[who].pg.data = DataDir::Empty;
                            } else {
                                ok = false;
                            }
                        }
                        TaskEffect::Clone { from } | TaskEffect::Rewind { from } => {
                            if self.members[from].pg.running()
                                && self.peers_linked(who, from)
                                && self.members[who].pg.run == Run::Down
                            {
                                let wal = self.members[from].pg.wal;
                                let tl = self.members[from].pg.timeline;
                                let pg = &mut self.members[who].pg;
                                pg.data = DataDir::Ready {
                                    sysid: "7000".into(),
                                    was_primary: false,
                                };
                                pg.wal = wal;
                                pg.timeline = tl;
                            } else {
                                ok = false;
                            }
                        }
                    }
                }
                self.complete_task(who, inc, id, ok);
            }
            Ev::Fault(f) => self.fault(f),
            Ev::Restarted {
                who,
                epoch,
                as_primary,
                task,
                inc,
            } => {
                let pg = &mut self.members[who].pg;
                if pg.epoch != epoch || pg.data == DataDir::Empty {
                    self.complete_task(who, inc, task, false);
                    return Ok(());
                }
                pg.epoch += 1;
                pg.run = Run::Starting { as_primary };
                let epoch = pg.epoch;
                let to = if as_primary {
                    Run::Primary
                } else {
                    Run::Replica
                };
                let at = self.now + Duration::from_millis(self.rng.random_range(100..1500));
                self.log(format!("m{who} restart: starting as {to:?}"));
                let task = Some(task);
                self.schedule(
                    at,
                    Ev::PgDone {
                        who,
                        epoch,
                        to,
                        task,
                        inc,
                    },
                );
            }
            Ev::Heal(h) => {
                match h {
                    HealWhat::Store(i) => self.members[i].store_cut -= 1,
                    HealWhat::Peers(i) => self.members[i].peers_cut -= 1,
                    HealWhat::StoreAll => self.store_down -= 1,
                    HealWhat::Unfreeze => {}
                    HealWhat::Resume => {
                        self.pause = self.pause.saturating_sub(1);
                        self.notify_watchers();
                    }
                    HealWhat::Watchdog(i) => {
                        let m = &mut self.members[i];
                        m.watchdog_broken -= 1;
                        if m.watchdog_broken == 0 {
                            m.watchdog_broken_since = None;
                        }
                    }
                }
                self.log(format!("heal {h:?}"));
            }
            Ev::Restart(who) => {
                let m = &mut self.members[who];
                m.alive = true;
                m.inc += 1;
                m.core = HaCore::new(identity(&m.name));
                m.lease = None;
                m.busy = 0;
                m.wake_pending = false;
                m.next_wake = None;
                m.last_member_json.clear();
                m.deadline_real = None;
                m.fence_armed = false;
                let inc = m.inc;
                self.log(format!("restart m{who}"));
                self.schedule(self.now, Ev::Wake(who, inc));
            }
        }
        Ok(())
    }

    fn complete_task(&mut self, who: usize, inc: u64, id: ActionId, ok: bool) {
        if self.members[who].inc != inc || !self.members[who].alive {
            return;
        }
        let outcome = if ok {
            Outcome::Ok
        } else {
            Outcome::Failed("simulated failure".into())
        };
        self.feed(who, Input::Completed { id, outcome });
        let inc = self.members[who].inc;
        self.schedule(self.now, Ev::Wake(who, inc));
    }

    fn fault(&mut self, f: Fault) {
        if self.quiet {
            return;
        }
        self.log(format!("fault {f:?}"));
        let now = self.now;
        match f {
            Fault::CrashMember { who, down_for } => {
                if !self.members[who].alive {
                    return;
                }
                // PostgreSQL dies with its agent (parent-death signal).
                self.members[who].alive = false;
                self.members[who].inc += 1;
                self.members[who].pg.crash();
                self.schedule(now + down_for, Ev::Restart(who));
            }
            Fault::CrashPg { who } => self.members[who].pg.crash(),
            Fault::CutFromStore { who, for_ } => {
                self.members[who].store_cut += 1;
                self.schedule(now + for_, Ev::Heal(HealWhat::Store(who)));
            }
            Fault::CutFromPeers { who, for_ } => {
                self.members[who].peers_cut += 1;
                self.schedule(now + for_, Ev::Heal(HealWhat::Peers(who)));
            }
            Fault::Isolate { who, for_ } => {
                self.members[who].store_cut += 1;
                self.members[who].peers_cut += 1;
                self.schedule(now + for_, Ev::Heal(HealWhat::Store(who)));
                self.schedule(now + for_, Ev::Heal(HealWhat::Peers(who)));
            }
            Fault::StoreOutage { for_ } => {
                self.store_down += 1;
                self.schedule(now + for_, Ev::Heal(HealWhat::StoreAll));
            }
            Fault::Stall { who, for_ } => {
                let m = &mut self.members[who];
                m.frozen_until = m.frozen_until.max(now + for_);
                self.schedule(now + for_, Ev::Heal(HealWhat::Unfreeze));
            }
            Fault::ChangeTimings { timings } => {
                self.timings = timings;
                let json = format!(
                    r#"{{"ttl": {}, "loop_wait": {}, "retry_timeout": {}}}"#,
                    timings.ttl.as_secs(),
                    timings.loop_wait.as_secs(),
                    timings.retry_timeout.as_secs()
                );
                self.store.put("config", &json, None, now);
                self.notify_watchers();
            }
            Fault::DeleteLock => {
                if let Some(h) = self.store.get("leader", now) {
                    self.deleted_holder = Some(h);
                }
                self.note_vanishing(now);
                self.store.delete("leader", now);
                self.notify_watchers();
            }
            Fault::Pause { for_ } => {
                self.pause += 1;
                self.notify_watchers();
                self.schedule(now + for_, Ev::Heal(HealWhat::Resume));
            }
            Fault::Request { who, request } => {
                let m = &self.members[who];
                if m.alive && (m.busy > 0 || m.frozen_until > now) {
                    // The shell takes API commands between its own steps, never inside one.
                    let at = now
                        + m.frozen_until
                            .saturating_sub(now)
                            .max(Duration::from_millis(10));
                    self.schedule(at, Ev::Fault(Fault::Request { who, request }));
                } else if m.alive {
                    // Through the REST API, which answers from the core: no store involved.
                    self.log(format!("m{who} asked for {request:?}"));
                    let id = RequestId(self.steps);
                    self.feed(who, Input::Requested { id, request });
                }
            }
            Fault::BreakWatchdog { who, for_ } => {
                let m = &mut self.members[who];
                m.watchdog_broken += 1;
                m.watchdog_broken_since.get_or_insert(now);
                let (armed, inc) = (m.fence_armed && m.alive, m.inc);
                self.schedule(now + for_, Ev::Heal(HealWhat::Watchdog(who)));
                if armed {
                    // The fence's next keepalive (at most a second away) fails; it says so.
                    let at = now + Duration::from_millis(self.rng.random_range(1..1000));
                    self.schedule(at, Ev::Wake(who, inc));
                }
            }
            Fault::Switchover { to, after } => {
                if let Some(leader) = self.store.get("leader", now) {
                    let f = Failover {
                        leader: Some(leader),
                        member: Some(format!("m{to}")),
                        scheduled_at: after.map(|a| wall_clock(now + a).to_rfc3339()),
                    };
                    self.store.put("failover", &f.to_json(), None, now);
                    self.notify_watchers();
                }
            }
        }
    }

    fn notify_watchers(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].alive && self.reaches_store(i) {
                let d = Duration::from_micros(self.rng.random_range(500..10_000));
                let inc = self.members[i].inc;
                self.schedule(self.now + d, Ev::Wake(i, inc));
            }
        }
    }

    /// A wake-up of a member's shell: deadline check, observation, cycle.
    fn wake(&mut self, who: usize, inc: u64) {
        let m = &self.members[who];
        if !m.alive || m.inc != inc {
            return;
        }
        if m.frozen_until > self.now {
            let at = m.frozen_until;
            self.schedule(at, Ev::Wake(who, inc));
            return;
        }
        if m.busy > 0 {
            self.members[who].wake_pending = true;
            return;
        }
        let now_local = self.local(who);
        let actions = self.members[who].core.step(Input::Tick, now_local);
        self.note_deadline(who);
        self.execute(who, actions);
        if self.members[who].busy > 0 {
            self.members[who].wake_pending = true;
            return;
        }
        // Observe.
        let view = if self.reaches_store(who) {
            // The member reads the config key too (the shell applies it before the cycle).
            self.members[who].timings = self.timings;
            self.members[who].paused = self.pause > 0;
            let mut view = self.store.view(self.now);
            view.vanished_leader = self.vanished_leader();
            Some(view)
        } else {
            None
        };
        let m = &mut self.members[who];
        if m.paused && m.watchdog_broken > 0 {
            m.watchdog_broken_since = Some(self.now);
        }
        let scheduled_at = view
            .as_ref()
            .and_then(|v| v.failover.as_ref())
            .and_then(|f| f.value.scheduled_at.clone());
        let obs = Observation {
            dcs: view,
            pg: self.members[who].pg.facts(),
            policy: self.policy(who),
            watchdog: self.watchdog_state(who),
            // The shell's own conversion, on the simulated wall clock.
            switchover_at: pgwarden::agent::countdown(
                scheduled_at.as_deref(),
                wall_clock(self.now),
            ),
        };
        let actions = self.members[who]
            .core
            .step(Input::Observed(Box::new(obs)), now_local);
        self.note_deadline(who);
        self.execute(who, actions);
        self.publish_member(who);
        // Sleep until the core's next wake-up (the shell also wakes on store changes).
        let next = self
            .real_of(who, self.members[who].core.next_wakeup())
            .max(self.now + MS);
        if self.members[who]
            .next_wake
            .is_none_or(|t| t <= self.now || next < t)
        {
            self.members[who].next_wake = Some(next);
            self.schedule(next, Ev::Wake(who, inc));
        }
    }

    fn publish_member(&mut self, who: usize) {
        if !self.reaches_store(who) {
            return;
        }
        let m = &self.members[who];
        let member = Member {
            api_url: Some(format!("http://{}/patroni", m.name)),
            conn_url: Some(format!("postgres://{}/postgres", m.name)),
            state: Some(if m.pg.running() { "running" } else { "stopped" }.into()),
            timeline: Some(m.pg.timeline),
            role: Some(
                if m.pg.run == Run::Primary {
                    "primary"
                } else {
                    "replica"
                }
                .into(),
            ),
            ..Member::default()
        };
        let json = member.to_json();
        // Touching the member key keeps the session alive, as with etcd.
        let lease = self.ensure_lease(who);
        self.store.keepalive(lease, self.now);
        if json != self.members[who].last_member_json {
            let key = format!("members/{}", self.members[who].name);
            self.store.put(&key, &json, Some(lease), self.now);
            self.members[who].last_member_json = json;
        }
    }

    fn ensure_lease(&mut self, who: usize) -> LeaseId {
        let ttl = self.members[who].timings.ttl;
        match self.members[who].lease {
            // As etcd's backend: a changed ttl takes a new lease; keys move on their next write.
            Some(l)
                if self.store.lease_alive(l, self.now) && self.store.lease_ttl(l) == Some(ttl) =>
            {
                l
            }
            _ => {
                let l = self.store.grant(ttl, self.now);
                self.members[who].lease = Some(l);
                self.members[who].last_member_json.clear();
                l
            }
        }
    }

    fn feed(&mut self, who: usize, input: Input) {
        let now_local = self.local(who);
        let actions = self.members[who].core.step(input, now_local);
        self.note_deadline(who);
        self.execute(who, actions);
    }

    /// Remembers the leader key about to be deleted, with its lease.
    fn note_vanishing(&mut self, now: Duration) {
        let holder = self.store.get("leader", now);
        let lease = self.store.lease_of("leader", now);
        if let (Some(h), Some(l)) = (holder, lease) {
            // As etcd's backend: bounded by the granted ttl of the lease the key was on.
            let ttl = self.store.lease_ttl(l).unwrap_or(self.timings.ttl);
            self.vanished = Some((h, l, now, ttl));
        }
    }

    /// As the etcd backend reports it: the holder of a deleted leader key whose lease lives,
    /// within its ttl of the deletion, while no leader key exists.
    fn vanished_leader(&mut self) -> Option<String> {
        let now = self.now;
        if self.store.get("leader", now).is_some() {
            self.vanished = None;
        }
        let (h, l, at, ttl) = self.vanished.clone()?;
        (now < at + ttl && self.store.lease_alive(l, now)).then_some(h)
    }

    /// Records the member's lease deadline in real time, for the deadline invariant.
    fn note_deadline(&mut self, who: usize) {
        let deadline = self.members[who].core.lease_deadline();
        if let Some(d) = deadline {
            let real = self.real_of(who, d);
            self.members[who].deadline_real = Some(real);
        }
        // The shell arms the fence with the deadline; a required watchdog's fence process then
        // opens the device and reports within milliseconds, which wakes the shell.
        let m = &mut self.members[who];
        let armed = deadline.is_some();
        if armed != m.fence_armed {
            m.fence_armed = armed;
            if armed && m.watchdog_required {
                let inc = m.inc;
                let at = self.now + Duration::from_millis(self.rng.random_range(1..5));
                self.schedule(at, Ev::Wake(who, inc));
            }
        }
    }

    /// What the shell reports of a member's watchdog: the fence process opens a required
    /// device while armed (active, or unusable when broken); disarmed, a broken device still
    /// passes the access(2) check.
    fn watchdog_state(&self, who: usize) -> WatchdogState {
        let m = &self.members[who];
        match (m.watchdog_required, m.fence_armed, m.watchdog_broken > 0) {
            (false, _, _) => WatchdogState::Unneeded,
            (true, true, true) => WatchdogState::Unusable("simulated break".into()),
            (true, true, false) => WatchdogState::Active,
            (true, false, _) => WatchdogState::Ready,
        }
    }

    fn execute(&mut self, who: usize, actions: Vec<(ActionId, Action)>) {
        for (id, action) in actions {
            self.log(format!("{} -> {action:?}", self.members[who].name));
            self.execute_one(who, id, action);
        }
    }

    fn execute_one(&mut self, who: usize, id: ActionId, action: Action) {
        let inc = self.members[who].inc;
        let now = self.now;
        let r = |w: &mut World, lo: u64, hi: u64| {
            now + Duration::from_millis(w.rng.random_range(lo..hi))
        };
        match action {
            Action::StopNow => {
                self.kill_pg(who);
                self.complete_inline(who, id, Outcome::Ok);
            }
            Action::AcquireLock
            | Action::RenewLock { .. }
            | Action::ReleaseLock { .. }
            | Action::ClaimInitialize
            | Action::WriteInitialize { .. }
            | Action::CancelInitialize
            | Action::ClearFailover { .. } => self.dcs_request(who, id, action),
            Action::ProbePeers { names } => {
                let mut report = BTreeMap::new();
                for n in names {
                    let Some(j) = self.members.iter().position(|m| m.name == n) else {
                        continue;
                    };
                    let p = &self.members[j];
                    let answers = p.alive && p.frozen_until <= now && self.peers_linked(who, j);
                    // `watchdog_failed` in its `/patroni`: weighed like nofailover.
                    let watchdog_failed =
                        matches!(self.watchdog_state(j), WatchdogState::Unusable(_));
                    let facts = answers.then(|| PeerFacts {
                        // The role the real `/patroni` reports: primary while writable, and
                        // "promoted" while a promotion runs.
                        is_primary: p.pg.writable()
                            || matches!(p.core.task_in_flight(), Some(Action::Promote)),
                        wal_position: p.pg.wal,
                        nofailover: watchdog_failed,
                        failover_priority: 1,
                        running: p.pg.running(),
                        starting: matches!(p.pg.run, Run::Starting { .. }),
                    });
                    report.insert(n, facts);
                }
                self.members[who].busy += 1;
                let at = r(self, 1, 30);
                self.schedule(
                    at,
                    Ev::Deliver {
                        who,
                        inc,
                        id,
                        outcome: Outcome::Peers(report),
                    },
                );
            }
            Action::Bootstrap => {
                let at = r(self, 500, 1500);
                self.task_done_at(at, who, inc, id, TaskEffect::Bootstrap);
            }
            Action::Clone { from } | Action::Rewind { from } => {
                let Some(j) = self.members.iter().position(|m| m.name == from) else {
                    return self.complete_task(who, inc, id, false);
                };
                let at = r(self, 200, 3000);
                let effect = if self.members[who].pg.data == DataDir::Empty {
                    TaskEffect::Clone { from: j }
                } else {
                    TaskEffect::Rewind { from: j }
                };
                self.task_done_at(at, who, inc, id, effect);
            }
            Action::RemoveDataDir => {
                let at = r(self, 10, 100);
                self.task_done_at(at, who, inc, id, TaskEffect::RemoveData);
            }
            Action::StartPrimary | Action::StartReplica { .. } => {
                let as_primary = action == Action::StartPrimary;
                let pg = &mut self.members[who].pg;
                if pg.run != Run::Down || pg.data == DataDir::Empty {
                    return self.complete_task(who, inc, id, false);
                }
                if let Action::StartReplica { upstream } = &action {
                    pg.upstream = upstream.clone();
                }
                pg.epoch += 1;
                pg.run = Run::Starting { as_primary };
                let epoch = pg.epoch;
                let to = if as_primary {
                    Run::Primary
                } else {
                    Run::Replica
                };
                let at = r(self, 100, 1500);
                self.schedule(
                    at,
                    Ev::PgDone {
                        who,
                        epoch,
                        to,
                        task: Some(id),
                        inc,
                    },
                );
            }
            Action::Follow { upstream } => {
                self.members[who].pg.upstream = Some(upstream);
                let at = r(self, 1, 50);
                self.task_done_at(at, who, inc, id, TaskEffect::None);
            }
            Action::Promote => {
                let pg = &mut self.members[who].pg;
                if pg.run != Run::Replica {
                    return self.complete_task(who, inc, id, false);
                }
                pg.upstream = None;
                let epoch = pg.epoch;
                let at = r(self, 50, 800);
                self.schedule(
                    at,
                    Ev::PgDone {
                        who,
                        epoch,
                        to: Run::Primary,
                        task: Some(id),
                        inc,
                    },
                );
            }
            Action::StopGraceful => {
                self.check_not_early(who);
                let pg = &mut self.members[who].pg;
                if pg.run == Run::Down {
                    return self.complete_task(who, inc, id, true);
                }
                let writable =
                    pg.writable() || matches!(pg.run, Run::Starting { as_primary: true });
                let was_replica = !writable;
                pg.epoch += 1;
                pg.run = Run::Stopping {
                    writable,
                    was_replica,
                };
                let epoch = pg.epoch;
                let at = r(self, 50, 500);
                self.schedule(
                    at,
                    Ev::PgDone {
                        who,
                        epoch,
                        to: Run::Down,
                        task: Some(id),
                        inc,
                    },
                );
            }
            Action::ApplyConfig { .. } | Action::EnsureSlots { .. } => {
                self.complete_inline(who, id, Outcome::Ok)
            }
            Action::Answer { result, .. } => {
                self.log(format!("m{who} answers: {result:?}"));
                self.complete_inline(who, id, Outcome::Ok);
            }
            Action::Restart { primary, upstream } => {
                let pg = &mut self.members[who].pg;
                if !pg.running() {
                    return self.complete_task(who, inc, id, false);
                }
                if !primary {
                    pg.upstream = upstream;
                }
                let writable = pg.writable();
                pg.epoch += 1;
                pg.run = Run::Stopping {
                    writable,
                    was_replica: !writable,
                };
                let epoch = pg.epoch;
                let at = r(self, 50, 500);
                self.schedule(
                    at,
                    Ev::Restarted {
                        who,
                        epoch,
                        as_primary: primary,
                        task: id,
                        inc,
                    },
                );
            }
            Action::Reinitialize => {
                // An immediate stop, then the data directory emptied.
                let down = self.kill_pg(who);
                let done = down + Duration::from_millis(self.rng.random_range(10..100));
                self.task_done_at(done, who, inc, id, TaskEffect::RemoveData);
            }
            Action::Fatal { reason } => {
                self.log(format!("FATAL m{who}: {reason}"));
                self.members[who].alive = false;
                self.members[who].pg.crash();
            }
        }
    }

    /// An immediate stop: every process killed, down within `STOP_MAX` (a kill under way is
    /// not delayed by another). When PostgreSQL is down.
    fn kill_pg(&mut self, who: usize) -> Duration {
        let (now, inc) = (self.now, self.members[who].inc);
        let pg = &mut self.members[who].pg;
        if pg.run == Run::Down {
            return now;
        }
        if let Some(t) = pg.killed_by.filter(|t| *t >= now)
            && matches!(pg.run, Run::Stopping { .. })
        {
            return t;
        }
        let writable = pg.writable() || matches!(pg.run, Run::Starting { as_primary: true });
        let was_replica =
            pg.run == Run::Replica || matches!(pg.run, Run::Starting { as_primary: false });
        pg.epoch += 1;
        pg.run = Run::Stopping {
            writable,
            was_replica,
        };
        let epoch = pg.epoch;
        let at =
            now + Duration::from_millis(self.rng.random_range(1..=STOP_MAX.as_millis() as u64));
        self.members[who].pg.killed_by = Some(at);
        let (to, task) = (Run::Down, None);
        self.schedule(
            at,
            Ev::PgDone {
                who,
                epoch,
                to,
                task,
                inc,
            },
        );
        at
    }

    /// A task that succeeds at `at` with `effect`.
    fn task_done_at(
        &mut self,
        at: Duration,
        who: usize,
        inc: u64,
        id: ActionId,
        effect: TaskEffect,
    ) {
        self.schedule(
            at,
            Ev::TaskDone {
                who,
                inc,
                id,
                ok: true,
                effect,
            },
        );
    }

    fn complete_inline(&mut self, who: usize, id: ActionId, outcome: Outcome) {
        self.feed(who, Input::Completed { id, outcome });
    }

    /// A DCS request: it may be lost, delayed past its timeout, or never reach a store that is
    /// cut off; the effect lands at the store when (if) the request arrives.
    fn dcs_request(&mut self, who: usize, id: ActionId, action: Action) {
        let inc = self.members[who].inc;
        let sent_at = self.local(who);
        // As the shell: bounded by retry_timeout and, while a lease is held, by its deadline.
        let retry = self.members[who].timings.retry_timeout;
        let deadline = match &action {
            Action::RenewLock { deadline } => Some(*deadline),
            _ => self.members[who].core.lease_deadline(),
        };
        let limit = match deadline {
            Some(d) => self.real_of(who, d).saturating_sub(self.now).min(retry),
            None => retry,
        };
        let timeout_at = self.now + limit;
        self.members[who].busy += 1;
        let arrival = if self.reaches_store(who) {
            self.latency().map(|l| self.now + l)
        } else {
            None
        };
        let reply = match arrival {
            Some(a) => self.latency().map(|l| a + l).filter(|r| *r <= timeout_at),
            None => None,
        };
        if let Some(a) = arrival {
            self.schedule(
                a,
                Ev::StoreOp {
                    who,
                    inc,
                    id,
                    action: action.clone(),
                    sent_at,
                    reply_at: reply,
                },
            );
        }
        if reply.is_none() {
            let outcome = match action {
                Action::AcquireLock | Action::RenewLock { .. } => Outcome::Lock {
                    held: false,
                    answered: false,
                    sent_at,
                },
                _ => Outcome::Failed("timeout".into()),
            };
            self.schedule(
                timeout_at,
                Ev::Deliver {
                    who,
                    inc,
                    id,
                    outcome,
                },
            );
        }
    }

    fn store_op(&mut self, who: usize, action: &Action, sent_at: MonoTime) -> Outcome {
        let now = self.now;
        let name = self.members[who].name.clone();
        let before = self.store.revision();
        let outcome = match action {
            Action::AcquireLock => {
                let lease = self.ensure_lease(who);
                self.store.keepalive(lease, now);
                let held = self.store.create("leader", &name, Some(lease), now)
                    || self.store.get("leader", now).as_deref() == Some(name.as_str());
                Outcome::Lock {
                    held,
                    answered: true,
                    sent_at,
                }
            }
            Action::RenewLock { .. } => {
                let lease = self.ensure_lease(who);
                self.store.keepalive(lease, now);
                let held = self.store.rebind_if_value("leader", &name, lease, now);
                if held {
                    let st = Status {
                        optime: self.members[who].pg.wal,
                        ..Status::default()
                    }
                    .to_json();
                    if self.store.get("status", now).as_deref() != Some(st.as_str()) {
                        self.store.put("status", &st, None, now);
                    }
                }
                Outcome::Lock {
                    held,
                    answered: true,
                    sent_at,
                }
            }
            Action::ReleaseLock { version } => {
                // (If the delete fails, the key is still there, which clears the record.)
                self.note_vanishing(now);
                self.store
                    .delete_if_value_at("leader", &name, version.as_ref(), now);
                Outcome::Ok
            }
            Action::ClaimInitialize => {
                let lease = self.ensure_lease(who);
                if self.store.create_or_owned("initialize", "", lease, now) {
                    Outcome::Ok
                } else {
                    Outcome::Failed("lost".into())
                }
            }
            Action::WriteInitialize { sysid } => {
                self.store.put("initialize", sysid, None, now);
                Outcome::Ok
            }
            Action::CancelInitialize => {
                self.store.delete("initialize", now);
                Outcome::Ok
            }
            Action::ClearFailover { version } => {
                if self
                    .store
                    .compare_and_put("failover", "{}", version.as_ref(), now)
                {
                    Outcome::Ok
                } else {
                    Outcome::Failed("version changed".into())
                }
            }
            _ => Outcome::Failed("not a store operation".into()),
        };
        if self.store.revision() != before {
            self.notify_watchers();
        }
        outcome
    }
}

fn identity(name: &str) -> Identity {
    Identity {
        name: name.into(),
        nofailover: false,
        failover_priority: 1,
        can_bootstrap: true,
    }
}
