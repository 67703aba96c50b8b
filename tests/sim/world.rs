//! The simulated world the real shell runs in: members (a simulated PostgreSQL each, and the
//! links and faults around it), the in-memory store, a seeded random source and the safety
//! invariants of ha-safety.md, checked at every change of a server or of the store and at
//! every tick. Time is tokio's paused clock; `now` is the store's clock on it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden::agent::DeviceStatus;
use pgwarden::api::{ApiCommand, ApiState};
use pgwarden::dcs::mem::MemDcs;
use pgwarden::ha::{Countdown, WatchdogState};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};

use crate::fake_pg::FakePg;
use crate::params::{Params, STALL_MAX, STOP_MAX, Timings};

/// The world, shared by the simulated endpoints of every member.
pub type Shared = Arc<Mutex<World>>;

/// The wall clock at store time `t` (every member's, as if synchronised by NTP).
pub fn wall_clock(t: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::UNIX_EPOCH
        + chrono::Duration::from_std(t).expect("in range")
        + chrono::Duration::days(20_000)
}

/// Boot time of every member at store time zero (deadlines are never near zero).
pub const BOOT_OFFSET: Duration = Duration::from_secs(1000);

/// A WAL sender that outlives its link: the primary never heard the standby go, so it lists
/// it, at the position it last confirmed, until `wal_sender_timeout` or its own restart.
#[derive(Debug, Clone, Copy)]
pub struct Lingering {
    pub primary: usize,
    /// The primary's run (`FakePg::epoch`) it belongs to.
    pub epoch: u64,
    pub pos: u64,
    pub until: Duration,
}

pub struct SimMember {
    pub name: String,
    pub pg: FakePg,
    /// Local clock rate (drift).
    pub rate: f64,
    /// How far its clocks jumped ahead (as after a suspend), and its wall clock's own steps
    /// (NTP), in ms either way.
    pub clock_jump: Duration,
    pub wall_step_ms: i64,
    /// Incarnation of the agent: bumped when it dies, which turns every endpoint of the old
    /// one inert (its leftover tasks stop at their next step).
    pub inc: u64,
    pub alive: bool,
    pub store_cut: u32,
    pub peers_cut: u32,
    /// The WAL sender its primary kept when the link between them broke (see `cut_peers`).
    pub lingering: Option<Lingering>,
    pub frozen_until: Duration,
    /// Real time of the last lease deadline its shell gave its fence (for the deadline
    /// invariant).
    pub deadline_real: Option<Duration>,
    pub watchdog_required: bool,
    /// Breaks of its device in force, and since when it may not be writable for that reason
    /// (the break, or the last tick of a pause, when the watchdog does not count).
    pub watchdog_broken: u32,
    pub watchdog_broken_since: Option<Duration>,
    /// Its fence is armed (the core holds a lease): the device is open, or failing.
    pub fence_armed: bool,
    pub watchdog_tx: watch::Sender<DeviceStatus>,
    /// The store's change notifications as they reach this member (see `notify`), and one
    /// it missed while cut off (delivered when it is connected again).
    pub store_changes: watch::Sender<u64>,
    pub missed_change: bool,
    /// What its store handle does with a change it is told of before its loop hears of it
    /// (a Kubernetes Lease observer records the new version then, as its watch would).
    pub watch: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The REST API snapshot its shell publishes (peers' probes read it).
    pub api: ApiState,
    pub cmds: Option<mpsc::Sender<ApiCommand>>,
    pub shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    /// A restart was asked of it then (its stop is not a hand-over).
    pub restart_asked: Option<Duration>,
    /// Initdb runs done by this member (each makes a new system identifier).
    pub initdbs: u32,
}

pub struct World {
    /// The operator's handle on the store: its clock, direct edits.
    pub store: MemDcs,
    pub rng: StdRng,
    pub params: Params,
    pub members: Vec<SimMember>,
    pub store_down: u32,
    /// The timings and pause count in the store's `config`.
    pub timings: Timings,
    pub pause: u32,
    /// The holder whose lock was deleted by hand, until a lock exists again: it cannot know
    /// at that instant, so it is held to "never two writers" and its deadline only.
    pub deleted_holder: Option<String>,
    pub trace: Vec<String>,
    pub verbose: bool,
    pub violation: Option<String>,
    /// Quiet phase: no loss, no spikes, no faults.
    pub quiet: bool,
    pub leader_seen_after_heal: Option<Duration>,
    /// When an agent last started (one the schedule keeps down past the heal, perhaps the only
    /// member with data, delays the leader it is waited for).
    pub last_agent_start: Duration,
    pub checks: u64,
    /// The WAL every member holds and the commits acknowledged to clients.
    pub repl: crate::replication::Wal,
}

impl World {
    pub fn new(seed: u64, params: Params, store: MemDcs) -> World {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let members = (0..params.members)
            .map(|i| {
                let name = format!("m{i}");
                SimMember {
                    api: ApiState::new(pgwarden::api::Snapshot::new("sim", name.as_str())),
                    name,
                    pg: FakePg::new(),
                    rate: 1.0 + rng.random_range(-0.005..0.005),
                    clock_jump: Duration::ZERO,
                    wall_step_ms: 0,
                    inc: 0,
                    alive: false,
                    store_cut: 0,
                    peers_cut: 0,
                    lingering: None,
                    frozen_until: Duration::ZERO,
                    deadline_real: None,
                    watchdog_required: params.watchdog_required[i],
                    watchdog_broken: 0,
                    watchdog_broken_since: None,
                    fence_armed: false,
                    watchdog_tx: watch::channel(DeviceStatus::Closed).0,
                    store_changes: watch::channel(0).0,
                    missed_change: false,
                    watch: None,
                    cmds: None,
                    shutdown: None,
                    task: None,
                    restart_asked: None,
                    initdbs: 0,
                }
            })
            .collect();
        World {
            store,
            rng,
            timings: params.timings,
            params,
            members,
            store_down: 0,
            pause: 0,
            deleted_holder: None,
            trace: Vec::new(),
            verbose: false,
            violation: None,
            quiet: false,
            leader_seen_after_heal: None,
            last_agent_start: Duration::ZERO,
            checks: 0,
            repl: Default::default(),
        }
    }

    /// Now, on the store's clock.
    pub fn now(&self) -> Duration {
        self.store.clock()
    }

    pub fn log(&mut self, s: String) {
        let now = self.now();
        if self.verbose {
            eprintln!("{:>10.3} {s}", now.as_secs_f64());
        }
        self.trace.push(format!("{now:?} {s}"));
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    pub fn reaches_store(&self, who: usize) -> bool {
        self.store_down == 0 && self.members[who].store_cut == 0
    }

    pub fn peers_linked(&self, a: usize, b: usize) -> bool {
        self.members[a].peers_cut == 0 && self.members[b].peers_cut == 0
    }

    /// Cuts `who` off from its peers: the WAL senders of the links this breaks linger.
    pub fn cut_peers(&mut self, who: usize) {
        // Links up until now (a sender already lingering keeps its own timeout).
        let streams: Vec<(usize, crate::replication::Standby)> = (0..self.members.len())
            .filter(|&p| self.members[p].pg.run == crate::fake_pg::Run::Primary)
            .flat_map(|p| self.standbys_of(p).into_iter().map(move |s| (p, s)))
            .filter(|(p, s)| {
                self.index_of(&s.name)
                    .is_some_and(|i| self.peers_linked(i, *p))
            })
            .collect();
        self.members[who].peers_cut += 1;
        let until = self.now() + crate::params::WAL_SENDER_TIMEOUT;
        for (p, s) in streams {
            let Some(i) = self.index_of(&s.name) else {
                continue;
            };
            if !self.peers_linked(i, p) {
                self.members[i].lingering = Some(Lingering {
                    primary: p,
                    epoch: self.members[p].pg.epoch,
                    pos: s.pos,
                    until,
                });
            }
        }
    }

    pub fn heal_peers(&mut self, who: usize) {
        self.members[who].peers_cut -= 1;
    }

    /// A network delay, or `None` for a lost message.
    pub fn latency(&mut self) -> Option<Duration> {
        if !self.quiet && self.rng.random_bool(self.params.loss) {
            return None;
        }
        if !self.quiet && self.rng.random_bool(self.params.spike) {
            return Some(Duration::from_millis(self.rng.random_range(500..3000)));
        }
        Some(Duration::from_micros(self.rng.random_range(500..20_000)))
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo..hi))
    }

    /// The member's boot time at store time `t`.
    pub fn boottime_at(&self, who: usize, t: Duration) -> Duration {
        let m = &self.members[who];
        BOOT_OFFSET + t.mul_f64(m.rate) + m.clock_jump
    }

    /// Store time at the member's boot time `b`.
    pub fn real_of(&self, who: usize, b: Duration) -> Duration {
        let m = &self.members[who];
        b.saturating_sub(BOOT_OFFSET + m.clock_jump).div_f64(m.rate)
    }

    /// The member's wall clock at store time `t`.
    pub fn wall_of(&self, who: usize, t: Duration) -> chrono::DateTime<chrono::Utc> {
        let m = &self.members[who];
        wall_clock(t)
            + chrono::Duration::from_std(m.clock_jump).expect("in range")
            + chrono::Duration::milliseconds(m.wall_step_ms)
    }

    /// What the fence process reports of a member's watchdog: it opens a required device
    /// while armed (active, or failed when broken); disarmed, the device is closed.
    pub fn device_status(&self, who: usize) -> DeviceStatus {
        let m = &self.members[who];
        match (m.watchdog_required, m.fence_armed, m.watchdog_broken > 0) {
            (true, true, true) => DeviceStatus::Failed,
            (true, true, false) => DeviceStatus::Active,
            _ => DeviceStatus::Closed,
        }
    }

    /// As the shell's fence reports it (disarmed, a broken device still passes access(2)).
    pub fn watchdog_state(&self, who: usize) -> WatchdogState {
        if !self.members[who].watchdog_required {
            return WatchdogState::Unneeded;
        }
        match self.device_status(who) {
            DeviceStatus::Active => WatchdogState::Active,
            DeviceStatus::Failed => WatchdogState::Unusable("simulated break".into()),
            DeviceStatus::Closed => WatchdogState::Ready,
        }
    }

    /// Tells the member's shell a change of its device's status.
    pub fn report_device(&mut self, who: usize) {
        let status = self.device_status(who);
        self.members[who]
            .watchdog_tx
            .send_if_modified(|s| std::mem::replace(s, status) != status);
    }

    /// Writes the `config` key: the timings and the pause flag in force.
    pub fn write_config(&mut self) {
        let t = self.timings;
        let json = format!(
            r#"{{"ttl": {}, "loop_wait": {}, "retry_timeout": {}, "maximum_lag_on_failover": 1048576, "pause": {}, "failsafe_mode": {}, "primary_start_timeout": {}, "shutdown_handover_timeout": {}, {}"postgresql": {{"use_slots": true, "use_pg_rewind": true}}}}"#,
            t.ttl.as_secs(),
            t.loop_wait.as_secs(),
            t.retry_timeout.as_secs(),
            self.pause > 0,
            self.params.failsafe,
            self.params.primary_start_timeout,
            self.params.shutdown_handover_timeout,
            self.params.sync.json(),
        );
        self.store.edit(|s, now| s.put("config", &json, None, now));
    }

    /// The holder the store's lock record names (expired or not, on either backend's
    /// semantics).
    pub fn holder(&self) -> Option<String> {
        self.store
            .edit(|s, now| s.get("leader", now))
            .as_deref()
            .and_then(crate::lease::holder_of)
    }

    pub fn describe(&self) -> String {
        let mut s = format!("leader key {:?};", self.holder());
        for m in &self.members {
            s += &format!(
                " {}: alive={} pg={:?} data={:?} api={:?};",
                m.name,
                m.alive,
                m.pg.run,
                m.pg.data,
                m.api.snapshot().pg.state
            );
        }
        s
    }

    /// A leader's fast stop is a switchover's: never before the time it was scheduled for, on
    /// its own wall clock (unless a restart or a shutdown was asked of it).
    pub fn check_not_early(&mut self, who: usize) {
        let now = self.now();
        let name = self.members[who].name.clone();
        if self.holder().as_deref() != Some(name.as_str()) || !self.members[who].pg.writable() {
            return;
        }
        if self.members[who].shutdown.is_none() {
            return;
        }
        if self.members[who]
            .restart_asked
            .is_some_and(|t| now < t + Duration::from_secs(120))
        {
            return;
        }
        let at = self
            .store
            .edit(|s, now| s.view(now))
            .failover
            .and_then(|f| f.value.scheduled_at);
        if let Some(at) = at
            && let Countdown::In(d) = pgwarden::agent::countdown(Some(&at), self.wall_of(who, now))
            && !d.is_zero()
        {
            self.fail(format!(
                "{name} hands over at {now:?}, {d:?} before the switchover scheduled at {at}"
            ));
        }
    }

    pub fn fail(&mut self, why: String) {
        if self.violation.is_none() {
            let d = self.describe();
            self.log(format!("VIOLATION {why}"));
            self.violation = Some(format!("{why}; {d}"));
        }
    }

    /// The safety invariants, at this instant.
    pub fn check(&mut self) {
        self.checks += 1;
        let now = self.now();
        let writable: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].pg.writable())
            .collect();
        let holder = self.holder();
        // A holder whose lock was deleted by hand is exempt from "writable only as the store's
        // holder" until a lock exists again and it is not writable ("never two writers" holds
        // throughout).
        if let Some(d) = &self.deleted_holder
            && holder.is_some()
            && self
                .members
                .iter()
                .any(|m| m.name == *d && !m.pg.writable())
        {
            self.deleted_holder = None;
        }
        if writable.len() > 1 {
            return self.fail(format!("two writable primaries at once: {writable:?}"));
        }
        if self.quiet
            && self.leader_seen_after_heal.is_none()
            && holder.is_some()
            && !writable.is_empty()
        {
            self.leader_seen_after_heal = Some(now);
        }
        let Some(&w) = writable.first() else {
            return;
        };
        let m = &self.members[w];
        let name = m.name.clone();
        // Never writable past its member's lease deadline by more than what the safety margin
        // budgets: a late wake-up (a stall) and the immediate stop itself.
        match m.deadline_real {
            Some(d) if now <= d + STALL_MAX + STOP_MAX => {}
            d => {
                return self.fail(format!(
                    "{name} writable at {now:?}, past its lease deadline {d:?}"
                ));
            }
        }
        // A required watchdog that broke: demoted within the fence's keepalive interval (1 s),
        // an inline store call the shell may be in (bounded by the retry_timeout in force when
        // it was sent: the run's longest), a stall and the stop.
        if m.watchdog_required
            && let Some(t) = m.watchdog_broken_since
            && now
                > t + Duration::from_secs(1) + self.params.max_retry_timeout + STALL_MAX + STOP_MAX
        {
            return self.fail(format!(
                "{name} writable at {now:?} with its required watchdog broken since {t:?}"
            ));
        }
        let deleted = self.deleted_holder.as_deref() == Some(name.as_str());
        // Failsafe mode keeps a leader cut off from the store writable after the store let its
        // lock expire, within the deadline its members' confirmations gave it (checked above);
        // never while the store names another holder.
        let failsafe = self.params.failsafe && holder.is_none();
        if holder.as_deref() != Some(name.as_str()) && !deleted && !failsafe {
            return self.fail(format!("{name} writable while the lock is {holder:?}"));
        }
        // In a synchronous mode, the leader holds every commit a client was told of.
        if self.params.sync.mode != pgwarden::config::SyncMode::Off
            && let Some((b, x)) = self.repl.missing_ack((m.pg.branch, m.pg.wal))
        {
            self.fail(format!(
                "{name} leads without the acknowledged commit at {x} of WAL branch {b}"
            ));
        }
    }

    /// A change in the store: it reaches every connected member a little later, one after
    /// the other in a fixed order (tokio's own watch wakes its receivers in a random order,
    /// which would break the replay); a member cut off gets it once connected again.
    pub fn notify(&mut self) {
        for who in 0..self.members.len() {
            if !self.reaches_store(who) {
                self.members[who].missed_change = true;
                continue;
            }
            self.members[who].missed_change = false;
            let d = self.millis(1, 10);
            let tx = self.members[who].store_changes.clone();
            let watch = self.members[who].watch.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                if let Some(w) = watch {
                    w();
                }
                tx.send_modify(|c| *c += 1);
            });
        }
    }

    /// Every 50 ms: clients write to whoever accepts writes; replicas copy from their
    /// upstream; leases run out; missed notifications reach members connected again; the
    /// invariants are checked.
    pub fn tick(&mut self) {
        let positions: Vec<(u64, u64, bool, usize)> = self
            .members
            .iter()
            .map(|m| (m.pg.wal, m.pg.timeline, m.pg.running(), m.pg.branch))
            .collect();
        for i in 0..self.members.len() {
            if self.members[i].pg.run == crate::fake_pg::Run::Primary {
                self.members[i].pg.wal += 100;
                continue;
            }
            let mut streaming = false;
            if self.members[i].pg.run == crate::fake_pg::Run::Replica
                && let Some(up) = self.members[i].pg.upstream.clone()
                && let Some(j) = self.index_of(&up)
                && positions[j].2
                && self.peers_linked(i, j)
                && self.members[j].pg.sysid() == self.members[i].pg.sysid()
            {
                let up = (positions[j].3, positions[j].0);
                let mine = (self.members[i].pg.branch, self.members[i].pg.wal);
                // Behind on the upstream's line (or diverged: as after pg_rewind), it takes
                // the upstream's line; ahead on it, it waits.
                let ahead = self.repl.holds(mine, up.0, up.1) && mine.1 > up.1;
                let pg = &mut self.members[i].pg;
                if !ahead {
                    (pg.branch, pg.wal) = up;
                }
                pg.timeline = pg.timeline.max(positions[j].1);
                streaming = true;
            }
            self.members[i].pg.streaming = streaming;
        }
        self.acknowledge();
        let now = self.now();
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            // While paused the watchdog holds nothing back (as in Patroni): a break counts
            // from the end of the pause, as the member knows it (a member cut from the store
            // does not learn that the pause ended).
            if (self.pause > 0 || m.api.snapshot().pause) && m.watchdog_broken > 0 {
                m.watchdog_broken_since = Some(now);
            }
        }
        for who in 0..self.members.len() {
            if self.members[who].missed_change && self.reaches_store(who) {
                self.members[who].missed_change = false;
                // A relist: only the current version is seen.
                if let Some(w) = self.members[who].watch.clone() {
                    w();
                }
                self.members[who].store_changes.send_modify(|c| *c += 1);
            }
        }
        self.store.edit(|s, now| s.expire(now));
        self.check();
    }

    /// The standbys streaming from primary `p` (as `pg_stat_replication` lists them), with
    /// how far each has its line.
    pub fn standbys_of(&self, p: usize) -> Vec<crate::replication::Standby> {
        let primary = &self.members[p];
        let now = self.now();
        (0..self.members.len())
            .filter(|&i| i != p)
            .filter_map(|i| {
                let m = &self.members[i];
                let streaming = m.pg.run == crate::fake_pg::Run::Replica
                    && m.pg.streaming
                    && m.pg.upstream.as_deref() == Some(primary.name.as_str())
                    && self.peers_linked(i, p);
                let pos = if streaming {
                    let on_line =
                        self.repl
                            .holds((primary.pg.branch, primary.pg.wal), m.pg.branch, m.pg.wal);
                    if on_line { m.pg.wal } else { 0 }
                } else {
                    // Once the link is back, the old connection carries on or fails at once.
                    let broken = !self.peers_linked(i, p);
                    m.lingering
                        .filter(|l| l.primary == p && l.epoch == primary.pg.epoch)
                        .filter(|l| broken && now < l.until)?
                        .pos
                };
                Some(crate::replication::Standby {
                    name: m.name.clone(),
                    pos,
                })
            })
            .collect()
    }

    /// In a synchronous mode, what each primary's clients have been told is committed.
    fn acknowledge(&mut self) {
        if self.params.sync.mode == pgwarden::config::SyncMode::Off {
            return;
        }
        for p in 0..self.members.len() {
            let pg = &self.members[p].pg;
            if pg.run != crate::fake_pg::Run::Primary {
                continue;
            }
            // Commits a new cluster's primary acknowledges before its identifier is in the
            // store belong to a bootstrap another member may still win (the loser's data is
            // discarded or rewound): not counted.
            let registered = pg.sysid().is_some_and(|id| {
                self.store
                    .edit(|s, now| s.get("initialize", now))
                    .is_some_and(|init| init == id)
            });
            if !registered {
                continue;
            }
            let standbys = self.standbys_of(p);
            if let Some(lsn) = crate::replication::acknowledged(&pg.sync_names, pg.wal, &standbys) {
                let branch = pg.branch;
                self.repl.ack(branch, lsn);
            }
        }
    }
}
