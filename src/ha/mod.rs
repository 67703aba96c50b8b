//! The HA decision engine: pure, deterministic, driven by its caller.
//!
//! [`HaCore`] holds what must be remembered between cycles (the lease deadline, the task in
//! flight, the leader race in progress) and turns inputs into [`Action`]s. It performs no I/O,
//! reads no clock and draws no random numbers: time arrives as [`MonoTime`] with every input.
//! That is what lets the simulation (`tests/sim/`) run thousands of failure schedules, through
//! the real shell, in simulated time.
//!
//! # Calling order
//! 1. Observe (DCS view, PostgreSQL facts, policy) and call `step(Input::Observed(obs), now)`.
//! 2. Carry out the returned actions **in order**. The first action may be
//!    [`Action::StopNow`]: do it before anything else. Answer every action with
//!    `step(Input::Completed { id, outcome }, now)` and carry out what that returns too.
//!    Lock operations report the time their request was *sent* ([`Outcome::Lock`]).
//! 3. Sleep until [`HaCore::next_wakeup`], a DCS change, an API command or a task completion.
//!    At a wakeup with no new observation, call `step(Input::Tick, now)` first: when the lease
//!    deadline has passed, it answers with [`Action::StopNow`].
//! 4. An API request (restart, reinitialize) is `step(Input::Requested { id, request }, now)`
//!    between two of these steps; it is answered with [`Action::Answer`], at once or when the
//!    task that carries it out ends.
//!
//! Time must never go backwards between calls.

mod action;
mod cycle;
mod failsafe;
pub mod race;
mod recovery;
mod requests;
pub mod switchover;
pub mod sync;
mod types;
mod watchdog;

use std::collections::BTreeMap;
use std::time::Duration;

pub use action::{Action, ActionId, Input, Outcome, Request, RequestId};
pub use types::{
    Countdown, DataDir, Identity, MonoTime, Observation, PeerFacts, PeerReport, PgFacts, Policy,
    WatchdogState,
};

/// Why an action was sent, so its outcome can be acted upon.
#[derive(Debug, Clone, PartialEq)]
enum Purpose {
    /// A lock operation; `acquiring` when taking the lock (not renewing it), which leads on to
    /// promotion or the bootstrap start. `ttl` and `margin` are the policy's when it was sent:
    /// the lease the store grants lasts that ttl.
    Lock {
        acquiring: bool,
        ttl: Duration,
        margin: Duration,
    },
    /// Peers probed before taking the lock. `unlisted`: this member is missing from the
    /// failsafe key, and these members it lists must answer that they are not primaries;
    /// `extra`: those of them asked for that alone (not judged as racers).
    RaceProbe {
        unlisted: Vec<String>,
        extra: Vec<String>,
    },
    /// The switchover candidate probed before a graceful demotion.
    SwitchoverProbe { candidate: String },
    /// Members asked to confirm this primary in failsafe mode, with the ttl and margin in force
    /// when they were asked (as for a lock operation).
    Failsafe { ttl: Duration, margin: Duration },
    /// The `initialize` race.
    ClaimInitialize,
    /// A bootstrapped member claiming `initialize` again before its first start as the
    /// primary: the claim may have expired, and been taken by another member, while initdb ran.
    ConfirmClaim,
    /// A long task.
    Task,
    /// The `sync` key written naming nobody, before this member becomes the primary.
    SyncRevoke,
    /// Anything whose outcome needs no reaction.
    Other,
}

/// The decision engine of one member. See the module documentation for the calling order.
#[derive(Debug)]
pub struct HaCore {
    me: Identity,
    next_id: u64,
    /// While we hold the lock: the instant we must have stopped writing by. It comes from the
    /// last successful lock operation alone (its send time, its ttl): a renewal with a shorter
    /// ttl shortens it, because the store's lease is the new one.
    lease_deadline: Option<MonoTime>,
    /// Send time of the lock operation that set `lease_deadline`: an older answer arriving
    /// later never replaces it.
    lease_sent_at: Option<MonoTime>,
    /// An observation has shown this member as the holder since it took the lock. From then on,
    /// a view without a leader means the lock vanished (deleted by hand, a store restored): the
    /// holder stops writing at once instead of racing for it while writable. Before it, a view
    /// without a leader may just predate our own write.
    lock_seen: bool,
    /// A postmaster pgwarden did not start is being stopped, to be started again as our child.
    restarting_unsupervised: bool,
    /// When the last renewal left, to pace renewals.
    last_renew_sent: Option<MonoTime>,
    /// Actions sent and not yet answered.
    pending: BTreeMap<ActionId, (Action, Purpose)>,
    /// The long task in flight.
    task: Option<(ActionId, Action, MonoTime)>,
    /// The last observation.
    last: Option<Observation>,
    /// When the last cycle ran.
    last_cycle: Option<MonoTime>,
    /// This member created the cluster and has not finished the post-bootstrap steps.
    bootstrapping: bool,
    /// While bootstrapping: the store has confirmed, since initdb, that the `initialize` claim
    /// is still ours.
    claim_confirmed: bool,
    /// pg_rewind failed against this leader; retry no sooner than the instant given.
    rewind_failed: Option<(String, MonoTime)>,
    /// The lock must be handed back once PostgreSQL is down (a failed start or promotion).
    give_up_lock: bool,
    /// A required watchdog could not be activated while this member held the lock: it does
    /// not race again before this instant (so that a device that stays broken does not turn
    /// into a storm of lock operations).
    watchdog_backoff_until: Option<MonoTime>,
    /// Since when this holder waits for its required watchdog to become active.
    watchdog_wait_since: Option<MonoTime>,
    /// A leader waits for a scheduled switchover: wake up at its time.
    scheduled_wake: Option<MonoTime>,
    /// The members this leader has made replication slots for, since it took the lock.
    slots_for: Option<Vec<String>>,
    /// The version of the `config` key last applied to PostgreSQL.
    config_applied: Option<crate::dcs::Version>,
    /// API requests waiting for the task that carries them out.
    requests: BTreeMap<ActionId, RequestId>,
    /// When this member first saw the cluster without a leader, to bound how long the race
    /// waits for peers that are still starting.
    leaderless_since: Option<MonoTime>,
    /// Since when this replica has not been streaming from its leader.
    not_streaming_since: Option<MonoTime>,
    /// The data directory diverged from the leader's history: rewind before starting again.
    needs_rewind: bool,
    /// The lock instance this member released (or tried to): it never holds that instance
    /// again, and re-sends the release until it lands.
    released: Option<crate::dcs::Version>,
    /// The primary's WAL position when the `synchronous_standby_names` in force was first
    /// seen (see `sync`).
    sync_mark: Option<sync::Mark>,
    /// How far each standby behind the primary confirms, and since when (see `sync`).
    sync_progress: sync::Progress,
    /// `synchronous_standby_names` is ours (set by a step), not the configuration's.
    sync_overridden: bool,
    /// When it was last set.
    sync_names_set_at: Option<MonoTime>,
    /// Since taking the lock, the `sync` key was written naming nobody: this member may
    /// become the primary without a former synchronous standby taking over behind it.
    sync_revoked: bool,
    /// Shutting down as a synchronous standby: waiting (until then) for the leader to take it
    /// out of the `sync` key before PostgreSQL stops, so commits neither wait for it nor lose
    /// their synchronous copy unannounced.
    sync_release_until: Option<MonoTime>,
    /// Shutting down after releasing the lock: the agent stays (its REST API answering that
    /// PostgreSQL is stopped) until the store names another leader, or until then. A racer
    /// takes a lock its holder released only once the holder has said it is not a primary;
    /// an agent gone at once would make them wait for the released lock's ttl.
    handover_until: Option<MonoTime>,
    /// A synchronous leader told to stop while its `sync` key lets nobody take over (it was
    /// moving the key to a new standby): it goes on leading, steering the key, until the key
    /// names a member that may take over, or until then; only then does it stop.
    sync_settle_until: Option<MonoTime>,
    /// Shutting down: when the hand-over must be over (`shutdown_handover_timeout` after the
    /// request), whatever it waits for.
    handover_by: Option<MonoTime>,
    /// Failsafe mode: the key, the confirmations asked and given.
    failsafe: failsafe::FailsafeState,
    /// Shutdown requested.
    shutting_down: bool,
    /// An observation arrived after the shutdown request: a replica decides whether it may
    /// stop on that one, not on a view read before it was told to stop (the leader may have
    /// listed it since).
    observed_since_shutdown: bool,
    /// A task started PostgreSQL since the last observation (which says it is down): a
    /// shutdown must stop it before releasing the lock.
    pg_started: bool,
    /// A task made PostgreSQL writable since the last observation (which says it is not): a
    /// lapsed or lost lease must stop it all the same.
    made_writable: bool,
    /// Shutdown complete: the shell may exit.
    finished: bool,
    /// A completion since the last cycle calls for a cycle at once. A failure does not: the
    /// next regular cycle retries it, where a failure that comes back at once (a full disk
    /// fails every config write) would otherwise spin the loop, a store read each turn.
    cycle_now: bool,
    /// The last cycle's log message.
    message: String,
}

impl HaCore {
    /// A core for member `me`.
    pub fn new(me: Identity) -> Self {
        HaCore {
            me,
            next_id: 0,
            lease_deadline: None,
            lease_sent_at: None,
            lock_seen: false,
            restarting_unsupervised: false,
            last_renew_sent: None,
            pending: BTreeMap::new(),
            task: None,
            last: None,
            last_cycle: None,
            bootstrapping: false,
            claim_confirmed: false,
            rewind_failed: None,
            give_up_lock: false,
            watchdog_backoff_until: None,
            watchdog_wait_since: None,
            requests: BTreeMap::new(),
            config_applied: None,
            slots_for: None,
            scheduled_wake: None,
            leaderless_since: None,
            not_streaming_since: None,
            needs_rewind: false,
            released: None,
            sync_mark: None,
            sync_progress: Default::default(),
            sync_overridden: false,
            sync_names_set_at: None,
            sync_revoked: false,
            sync_release_until: None,
            handover_until: None,
            sync_settle_until: None,
            handover_by: None,
            failsafe: Default::default(),
            shutting_down: false,
            observed_since_shutdown: false,
            pg_started: false,
            made_writable: false,
            finished: false,
            cycle_now: false,
            message: String::new(),
        }
    }

    /// This member's identity.
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// The last cycle's message, in Patroni's words where Patroni has them.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The instant by which PostgreSQL must have stopped writing, while we hold the lock.
    /// The shell also arms an independent fence with it.
    pub fn lease_deadline(&self) -> Option<MonoTime> {
        self.lease_deadline
    }

    /// We hold the lock with a valid lease at `now`.
    pub fn holds_lock(&self, now: MonoTime) -> bool {
        self.lease_deadline.is_some_and(|d| now < d)
    }

    /// A long task is running.
    pub fn task_in_flight(&self) -> Option<&Action> {
        self.task.as_ref().map(|(_, a, _)| a)
    }

    /// Shutting down, the core waits for news from the store: the shell keeps observing.
    pub fn wants_observation(&self) -> bool {
        self.sync_release_until.is_some()
            || self.handover_until.is_some()
            || self.sync_settle_until.is_some()
    }

    /// After a shutdown: everything is stopped and released.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// After a completion: whether to cycle now (observe and decide) rather than at the next
    /// wake-up, because something completed since the last cycle that did not fail.
    pub fn take_cycle_now(&mut self) -> bool {
        std::mem::take(&mut self.cycle_now)
    }

    /// When the shell must call again at the latest: the next cycle or the lease deadline.
    pub fn next_wakeup(&self) -> MonoTime {
        let loop_wait = self
            .last
            .as_ref()
            .map(|o| o.policy.loop_wait)
            .unwrap_or(Duration::from_secs(10));
        let cycle = self
            .last_cycle
            .map(|t| t + loop_wait)
            .unwrap_or(MonoTime::ZERO);
        [
            self.lease_deadline,
            self.scheduled_wake,
            self.sync_release_until,
            self.handover_until,
            self.sync_settle_until,
        ]
        .into_iter()
        .flatten()
        .fold(cycle, MonoTime::min)
    }

    /// Feeds one input; returns the actions to carry out, in order.
    pub fn step(&mut self, input: Input, now: MonoTime) -> Vec<(ActionId, Action)> {
        let mut out = Vec::new();
        // Safety first, whatever the input (ha-safety rule 2): a lapsed lease means we must
        // not write any more.
        self.expire_lease(now, &mut out);
        match input {
            Input::Observed(obs) => {
                self.last_cycle = Some(now);
                self.cycle_now = false;
                // Paused or not: a writable PostgreSQL without a valid lease is never kept
                // (after a resume, the others may take a lock that lapsed during the pause).
                let writable_unleased = obs.pg.maybe_writable() && !self.holds_lock(now);
                self.failsafe_observed(&obs, now);
                self.last = Some(*obs);
                self.observed_since_shutdown = self.shutting_down;
                self.pg_started = false;
                self.made_writable = false;
                let stopping = out.iter().any(|(_, a)| *a == Action::StopNow);
                if writable_unleased && !stopping {
                    self.message = "demoting: PostgreSQL runs as a primary without the lock".into();
                    self.emit(Action::StopNow, Purpose::Other, now, &mut out);
                    return out;
                }
                if !stopping {
                    self.cycle(now, &mut out);
                }
                self.sync_release_step(now, &mut out);
            }
            Input::Completed { id, outcome } => self.completed(id, outcome, now, &mut out),
            Input::Tick => {
                self.sync_release_step(now, &mut out);
                self.ask_failsafe(now, &mut out);
            }
            Input::Requested { id, request } => self.requested(id, request, now, &mut out),
            Input::Watchdog(state) => self.watchdog_changed(state, now, &mut out),
            Input::Shutdown => {
                self.shutting_down = true;
                let (ttl, loop_wait, bound) = self.last.as_ref().map_or(Default::default(), |o| {
                    let p = &o.policy;
                    (p.ttl, p.loop_wait, p.handover_timeout)
                });
                self.handover_by = Some(now + bound);
                if bound.is_zero() {
                    self.shutdown_step(now, &mut out);
                } else if self.is_sync_standby() || self.may_be_listed_as_sync() {
                    self.message = "shutting down: leaving the synchronous standbys first".into();
                    self.sync_release_until = Some(now + (2 * loop_wait).min(bound));
                    self.emit(Action::ReleaseSync, Purpose::Other, now, &mut out);
                } else if self.holds_lock(now)
                    && self
                        .last
                        .as_ref()
                        .is_some_and(|o| o.pg.in_recovery == Some(false))
                    && self.sync_key_lets_nobody_take_over()
                {
                    self.message = "shutting down: waiting for the sync key to name a standby \
                                    that may take over"
                        .into();
                    // Half the bound at most: the other half is the hand-over's after the stop.
                    self.sync_settle_until = Some(now + (ttl / 2).min(bound / 2));
                } else {
                    self.shutdown_step(now, &mut out);
                }
            }
        }
        // The calling order's promise: a stop comes before anything else of its batch (a store
        // call ahead of it could keep PostgreSQL writable for up to retry_timeout).
        if let Some(i) = out.iter().position(|(_, a)| *a == Action::StopNow)
            && i > 0
        {
            let stop = out.remove(i);
            out.insert(0, stop);
        }
        out
    }

    /// A lock operation's purpose, with the ttl and margin in force as it is sent (none known
    /// yet: zero, so an answer grants no lease).
    fn lock_purpose(&self, acquiring: bool) -> Purpose {
        let policy = self.last.as_ref().map(|o| &o.policy);
        Purpose::Lock {
            acquiring,
            ttl: policy.map_or(Duration::ZERO, |p| p.ttl),
            margin: policy.map_or(Duration::ZERO, |p| p.safety_margin),
        }
    }

    /// PostgreSQL may accept writes: the last observation says so, or a task since made it.
    fn maybe_writable(&self) -> bool {
        self.made_writable || self.last.as_ref().is_some_and(|o| o.pg.maybe_writable())
    }

    /// We no longer hold a lease. (`lease_sent_at` stays: an older answer never re-arms it.)
    fn drop_lease(&mut self) {
        self.sync_revoked = false;
        // The `initialize` claim is bound to our session, which may lapse with the lease: a
        // bootstrap confirms it again before its next start as the primary.
        self.claim_confirmed = false;
        self.lease_deadline = None;
        self.lock_seen = false;
        self.failsafe.active = false;
        self.failsafe.extended = false;
        // Checked afresh at the next leadership: the data directory may come from elsewhere
        // by then (a clone, a rewind).
        self.slots_for = None;
    }

    fn expire_lease(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        if let Some(d) = self.lease_deadline
            && now >= d
        {
            self.drop_lease();
            let writable = self.maybe_writable();
            // A start or promotion in flight would make it writable soon: stop that too.
            let becoming_writable = self.task_in_flight().is_some_and(Action::makes_writable);
            // Pause does not suspend this: the lock may be taken by another member once it lapses.
            let stopping = out.iter().any(|(_, a)| *a == Action::StopNow);
            if (writable || becoming_writable) && !stopping {
                self.message = "lock deadline passed: stopping PostgreSQL now".into();
                self.emit(Action::StopNow, Purpose::Other, now, out);
            }
        }
    }

    fn emit(
        &mut self,
        action: Action,
        purpose: Purpose,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) -> ActionId {
        self.next_id += 1;
        let id = ActionId(self.next_id);
        if action.is_task() {
            self.task = Some((id, action.clone(), now));
        }
        if let Action::RenewLock { .. } | Action::AcquireLock = action {
            self.last_renew_sent = Some(now);
            // If this operation lands, the lock lasts `ttl` from about now, whatever its answer
            // says or whether one comes: with a shorter ttl than the lease in hand, that is
            // sooner than the current deadline, which must not outlast it.
            if let (Some(d), Some(o)) = (self.lease_deadline, &self.last) {
                let landing = now + o.policy.ttl.saturating_sub(o.policy.safety_margin);
                self.lease_deadline = Some(d.min(landing));
            }
        }
        self.pending.insert(id, (action.clone(), purpose));
        out.push((id, action));
        id
    }

    fn completed(
        &mut self,
        id: ActionId,
        outcome: Outcome,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) {
        let Some((action, purpose)) = self.pending.remove(&id) else {
            return;
        };
        self.cycle_now |= !matches!(outcome, Outcome::Failed(_));
        if self.task.as_ref().is_some_and(|(tid, _, _)| *tid == id) {
            self.task = None;
        }
        match (&action, &outcome) {
            (Action::ApplyConfig { version }, Outcome::Ok) => {
                self.config_applied = Some(version.clone());
            }
            (Action::EnsureSlots { members }, Outcome::Ok) if self.lease_deadline.is_some() => {
                self.slots_for = Some(members.clone());
            }
            (Action::SetSyncStandbyNames { value }, Outcome::Ok) => {
                self.sync_overridden = value.is_some();
                self.sync_names_set_at = Some(now);
                self.sync_mark = None;
            }
            _ => {}
        }
        if let Some(request) = self.requests.remove(&id) {
            self.answer(request, &action, &outcome, now, out);
        }
        let policy = match &self.last {
            Some(o) => o.policy.clone(),
            None => return,
        };
        match (purpose, outcome) {
            (
                Purpose::Lock {
                    acquiring,
                    ttl,
                    margin,
                },
                Outcome::Lock {
                    held,
                    answered,
                    sent_at,
                },
            ) => {
                if held {
                    if self.lease_sent_at.is_none_or(|t| sent_at >= t) {
                        // The lease is the one this operation left with: its deadline replaces
                        // the previous one, earlier or later (ha-safety rule 1). The shorter of
                        // the ttls in force at sending and now, the larger margin.
                        let ttl = ttl.min(policy.ttl);
                        let margin = margin.max(policy.safety_margin);
                        self.lease_deadline = Some(sent_at + ttl.saturating_sub(margin));
                        self.lease_sent_at = Some(sent_at);
                        // The store's lease is ours again: no longer only failsafe's.
                        self.failsafe.extended = false;
                        // An answer that arrives after its own deadline: stop now.
                        self.expire_lease(now, out);
                    }
                    if acquiring && self.lease_deadline.is_some() {
                        self.after_acquire(now, out);
                    }
                } else if answered {
                    // The store says the lock is not ours: stop writing at once, paused or not.
                    self.drop_lease();
                    self.bootstrapping = false;
                    if self.maybe_writable() {
                        self.message = "lost the leader lock: stopping PostgreSQL now".into();
                        self.emit(Action::StopNow, Purpose::Other, now, out);
                    }
                } else {
                    // No answer: the store is out of reach even if reads still come from a
                    // cache (a frozen API server keeps its watches open and silent).
                    self.failsafe.unanswered = true;
                    self.ask_failsafe(now, out);
                }
                if answered {
                    // The store answers again (Patroni resets failsafe at every good cycle).
                    self.failsafe.unanswered = false;
                    self.failsafe.active = false;
                }
            }
            (Purpose::RaceProbe { unlisted, extra }, Outcome::Peers(mut report)) => {
                let Some(obs) = &self.last else { return };
                let Some(view) = &obs.dcs else { return };
                if view.leader.is_some() {
                    return;
                }
                if let Some(why) = failsafe::race_blocked(&unlisted, &extra, &report) {
                    self.message = format!("not racing: {why}");
                    return;
                }
                report.retain(|n, _| !extra.contains(n));
                // Starting peers are waited for at most one ttl after the lock was first seen
                // missing: a peer that never finishes starting must not block failover.
                let waited = self
                    .leaderless_since
                    .map_or(Duration::ZERO, |t| now.since(t));
                let wait_for_starting = waited < obs.policy.ttl;
                match race::judge(
                    &self.me,
                    &obs.pg,
                    view,
                    &report,
                    wait_for_starting,
                    obs.policy.sync.mode,
                ) {
                    race::Verdict::Healthiest => {
                        self.message = "acquiring the leader lock as the healthiest member".into();
                        self.emit(Action::AcquireLock, self.lock_purpose(true), now, out);
                    }
                    race::Verdict::NotHealthiest(why) => {
                        self.message = format!(
                            "following a different leader because i am not the healthiest node: {why}"
                        );
                    }
                }
            }
            (Purpose::Failsafe { ttl, margin }, Outcome::Failsafe { refused, sent_at }) => {
                self.failsafe_answered(refused, sent_at, (ttl, margin), now);
                // An answer after the deadline extends nothing: stop now.
                self.expire_lease(now, out);
            }
            (Purpose::SwitchoverProbe { candidate }, Outcome::Peers(report)) => {
                self.switchover_probed(&candidate, &report, now, out);
            }
            (Purpose::ClaimInitialize, Outcome::Ok) => {
                self.bootstrapping = true;
                self.claim_confirmed = false;
                self.message = "initializing a new cluster".into();
                self.emit(Action::Bootstrap, Purpose::Task, now, out);
            }
            (Purpose::ConfirmClaim, Outcome::Ok) => {
                self.claim_confirmed = true;
                if self.bootstrapping {
                    self.resume_start_primary(now, out);
                }
            }
            (Purpose::ConfirmClaim, Outcome::Declined) if self.initialize_is_ours() => {
                // Declined because the claim became the identifier it was for: nothing to lose.
                self.bootstrapping = false;
            }
            (Purpose::ConfirmClaim, Outcome::Declined) if self.bootstrapping => {
                // Our claim expired while initdb ran and another member is creating the
                // cluster now: ours must never start, nor write its identifier.
                self.bootstrapping = false;
                self.message = "another member took over the bootstrap while ours ran (our \
                                claim on initialize expired): discarding our new data directory"
                    .into();
                if self.lease_deadline.is_some() || self.dcs_says_holder() {
                    self.release(now, out);
                }
                self.emit(Action::RemoveDataDir, Purpose::Task, now, out);
            }
            (Purpose::SyncRevoke, Outcome::Ok) => {
                self.sync_revoked = true;
                self.resume_start_primary(now, out);
            }
            (Purpose::Task, outcome) => self.task_done(action, outcome, now, out),
            _ => {}
        }
        if self.shutting_down && self.task.is_none() {
            self.shutdown_step(now, out);
        }
    }

    fn after_acquire(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        let Some(obs) = self.last.clone() else { return };
        if let Some(view) = &obs.dcs
            && view.failover.is_some()
        {
            let version = view.failover.as_ref().map(|f| f.version.clone());
            self.emit(Action::ClearFailover { version }, Purpose::Other, now, out);
        }
        match self.watchdog_gate(&obs, now) {
            watchdog::Gate::Go => {}
            // The fence process opens the device once the lock is armed; the cycle that sees
            // it active promotes (or starts the bootstrapped primary).
            watchdog::Gate::Wait => {
                self.message = "waiting for the watchdog before becoming the primary".into();
                return;
            }
            watchdog::Gate::Refuse(why) => return self.watchdog_refused(&obs, &why, now, out),
        }
        if !self.bootstrapping && obs.pg.is_replica() {
            self.message = "promoted self to leader by acquiring session lock".into();
        }
        if self.bootstrapping || obs.pg.is_replica() {
            self.start_primary(now, out);
        }
    }

    /// Makes PostgreSQL the primary (we hold the lock): promotes a running replica, starts a
    /// stopped server. A member that has just bootstrapped first has the store confirm that
    /// its `initialize` claim still stands: the claim is bound to its session, and a claimant
    /// cut off from the store for longer than ttl while initdb ran may have lost it to another
    /// member, bootstrapping a second cluster.
    fn start_primary(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        if self.bootstrapping && !self.claim_confirmed {
            self.message = "bootstrapped: confirming our claim on initialize".into();
            self.emit(Action::ClaimInitialize, Purpose::ConfirmClaim, now, out);
            return;
        }
        let promoting = self.last.as_ref().is_some_and(|o| o.pg.is_replica());
        // A new cluster (a bootstrap) has no former voters: its key is written once it is
        // registered (`steer_sync`).
        if !self.sync_revoked
            && !self.bootstrapping
            && (promoting || !self.sync_overridden)
            && let Some(o) = self.last.clone()
            && o.policy.sync.mode != crate::config::SyncMode::Off
        {
            // The standbys the key names hold every commit the former primary acknowledged,
            // not those this one will: none of them may take over behind it. (A primary
            // restarting with our own list in force keeps a key that list is true to.)
            let Some(view) = &o.dcs else {
                self.message = "waiting for the store: the synchronous standbys must be revoked \
                                before this member becomes the primary"
                    .into();
                return;
            };
            // The key may have changed since the race judged it (a revocation declined for a
            // newer version says so): promote only under a key that still lets us take over,
            // unless the operator named us in a failover.
            let named = view.failover.as_ref().is_some_and(|f| {
                f.value.member.as_deref() == Some(self.me.name.as_str()) && f.value.leader.is_none()
            });
            if promoting && !named && !race::may_take_over(&self.me.name, view, o.policy.sync.mode)
            {
                self.message = "the sync key no longer lets this member take over: giving the \
                                lock back unpromoted"
                    .into();
                self.release_now(now, out);
                return;
            }
            if let Some(value) = sync::revocation(&self.me.name, &o.policy.sync, view) {
                self.message =
                    "revoking the synchronous standbys before becoming the primary".into();
                self.write_sync(view, value, Purpose::SyncRevoke, now, out);
                return;
            }
        }
        if promoting {
            // The replicas follow as soon as the store names us; a slot missing then refuses
            // their first connection, and PostgreSQL retries only 5 s later, while a strict
            // synchronous mode's commits wait for them. Made on the standby, before it ends.
            if let Some(o) = &self.last
                && o.policy.use_slots
                && let Some(view) = &o.dcs
            {
                let members = view
                    .members
                    .keys()
                    .filter(|n| **n != self.me.name)
                    .cloned()
                    .collect();
                self.emit(Action::EnsureSlots { members }, Purpose::Other, now, out);
            }
            self.emit(Action::Promote, Purpose::Task, now, out);
            return;
        }
        let bootstrapped = self.bootstrapping;
        self.emit(
            Action::StartPrimary { bootstrapped },
            Purpose::Task,
            now,
            out,
        );
    }

    /// A step `start_primary` waited for has been answered: go on with it, if nothing has
    /// changed that forbids it (a task started, the lease lapsed, the watchdog not ready).
    fn resume_start_primary(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        let go = self
            .last
            .clone()
            .is_some_and(|o| matches!(self.watchdog_gate(&o, now), watchdog::Gate::Go));
        if self.task.is_none() && self.holds_lock(now) && go {
            self.start_primary(now, out);
        }
    }

    /// The cluster's `initialize` key, as last seen, names this data directory's identifier.
    fn initialize_is_ours(&self) -> bool {
        self.last.as_ref().is_some_and(|o| {
            let init = o.dcs.as_ref().and_then(|v| v.initialize.as_deref());
            matches!(&o.pg.data, DataDir::Ready { sysid, .. } if Some(sysid.as_str()) == init)
        })
    }

    fn task_done(
        &mut self,
        action: Action,
        outcome: Outcome,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) {
        let ok = outcome == Outcome::Ok;
        if ok {
            match action {
                Action::StartPrimary { .. }
                | Action::StartReplica { .. }
                | Action::Restart { .. }
                | Action::Follow { .. }
                | Action::Promote => {
                    self.pg_started = true;
                    self.made_writable |= action.makes_writable();
                }
                Action::StopGraceful | Action::Reinitialize => {
                    self.pg_started = false;
                    self.made_writable = false;
                }
                _ => {}
            }
        }
        if ok && action.makes_writable() && !self.holds_lock(now) {
            // It became writable after the lease lapsed or was given up (a stop sent while the
            // start or promotion ran may have come too early to stop it).
            self.message = "PostgreSQL became writable without the lock: stopping it now".into();
            self.emit(Action::StopNow, Purpose::Other, now, out);
        }
        match action {
            Action::Bootstrap => {
                // The lock is taken at once only on a view that shows nobody may still write:
                // with the store unread, or another member's lock vanished meanwhile (it may
                // still be writable), it is raced for as any other, which waits for that.
                let view = self.last.as_ref().and_then(|o| o.dcs.as_ref());
                let vanished = view
                    .and_then(|v| v.vanished_leader.clone())
                    .filter(|gone| *gone != self.me.name);
                let held_off = self.failsafe_holds_off(now);
                if let (true, Some(why)) = (ok, &held_off) {
                    self.message = format!("bootstrapped, not taking the lock: {why}");
                } else if ok && (view.is_none() || vanished.is_some()) {
                    self.message = match vanished {
                        Some(gone) => format!(
                            "bootstrapped, but the leader lock of {gone} vanished while {gone} \
                             may still be writable"
                        ),
                        None => "bootstrapped; the DCS is not accessible".into(),
                    };
                } else if ok {
                    self.emit(Action::AcquireLock, self.lock_purpose(true), now, out);
                } else {
                    self.bootstrapping = false;
                    self.emit(Action::CancelInitialize, Purpose::Other, now, out);
                    self.emit(
                        Action::Fatal {
                            reason: format!("bootstrap failed: {outcome:?}"),
                        },
                        Purpose::Other,
                        now,
                        out,
                    );
                }
            }
            Action::StartPrimary { .. } if !ok => {
                // A holder whose PostgreSQL cannot start gives the lock to somebody else,
                // once PostgreSQL is certainly down (rule 6).
                self.message = "PostgreSQL failed to start as primary: giving up the lock".into();
                if self.bootstrapping {
                    self.bootstrapping = false;
                    self.emit(Action::CancelInitialize, Purpose::Other, now, out);
                }
                self.give_up(now, out);
            }
            Action::Promote if !ok => {
                self.message = "promotion failed: giving up the lock".into();
                self.give_up(now, out);
            }
            Action::StopGraceful if self.restarting_unsupervised => {
                // The next cycle starts it again, as our child; the lock (if ours) stays.
                self.restarting_unsupervised = false;
                if ok && let Some(o) = self.last.as_mut() {
                    o.pg.up = false;
                    o.pg.in_recovery = None;
                }
            }
            Action::StopGraceful => {
                let holder = self.holds_lock(now) || self.dcs_says_holder();
                if ok {
                    // The stop is done: every WAL record has been sent to the replicas
                    // (PostgreSQL's walsenders drain at shutdown). Hand the lock over.
                    if let Some(o) = self.last.as_mut() {
                        o.pg.up = false;
                        o.pg.in_recovery = None;
                    }
                    if holder {
                        self.release(now, out);
                    }
                } else if holder {
                    // The stop did not finish (or was cut short): PostgreSQL may still be up,
                    // so the lock goes only once it is seen down.
                    self.give_up(now, out);
                }
            }
            Action::Rewind { from } => {
                if ok {
                    self.rewind_failed = None;
                    self.needs_rewind = false;
                    self.emit(
                        Action::StartReplica {
                            upstream: Some(from),
                        },
                        Purpose::Task,
                        now,
                        out,
                    );
                } else {
                    let loop_wait = self
                        .last
                        .as_ref()
                        .map(|o| o.policy.loop_wait)
                        .unwrap_or_default();
                    self.rewind_failed = Some((from, now + loop_wait));
                }
            }
            _ => {}
        }
    }

    /// Stop being the leader: stop PostgreSQL now; the lock is released by the next cycle that
    /// sees PostgreSQL down.
    fn give_up(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        self.drop_lease();
        self.give_up_lock = true;
        self.emit(Action::StopNow, Purpose::Other, now, out);
    }

    fn dcs_says_holder(&self) -> bool {
        self.last
            .as_ref()
            .and_then(|o| o.dcs.as_ref())
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name == self.me.name)
    }

    /// Releases the lock, but never while PostgreSQL may still be up (rule 6): then it stops
    /// PostgreSQL first and the lock goes once it is down.
    fn release(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        if self.last.as_ref().is_some_and(|o| o.pg.up) {
            return self.give_up(now, out);
        }
        self.release_now(now, out);
    }

    /// Releases the lock as it is seen now (PostgreSQL is down, or a replica that stays one).
    fn release_now(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        self.drop_lease();
        let version = self
            .last
            .as_ref()
            .and_then(|o| o.dcs.as_ref())
            .and_then(|v| v.leader.as_ref())
            .filter(|l| l.name == self.me.name)
            .map(|l| l.version.clone());
        self.released = version.clone();
        if self.shutting_down {
            // Never past the lock's ttl: by then any racer may take it without our word.
            let ttl = self.last.as_ref().map_or(Duration::ZERO, |o| o.policy.ttl);
            let until = self.handover_by.map_or(now, |by| by.min(now + ttl));
            if until > now {
                self.handover_until.get_or_insert(until);
            }
        }
        self.emit(Action::ReleaseLock { version }, Purpose::Other, now, out);
    }

    /// Running PostgreSQL as a replica that the leader's `sync` key lists as a voter (not
    /// paused: then PostgreSQL is left running anyway).
    fn is_sync_standby(&self) -> bool {
        self.follows_in_a_sync_mode().is_some_and(|view| {
            view.sync.as_ref().is_some_and(|s| {
                s.value.leader.as_deref() != Some(self.me.name.as_str())
                    && s.value.members().contains(&self.me.name.as_str())
            })
        })
    }

    /// A running replica that the leader may list in `synchronous_standby_names` (it lists a
    /// member before the key names it), though the view we hold does not show it in the key:
    /// it is told to stop on a fresh view, leaving the standbys first if that one lists it.
    fn may_be_listed_as_sync(&self) -> bool {
        self.follows_in_a_sync_mode()
            .is_some_and(|view| view.members.get(&self.me.name).is_none_or(|m| !m.nosync()))
    }

    /// The view, when it shows us running PostgreSQL as a replica of another member's, with
    /// synchronous replication on and the cluster not paused.
    fn follows_in_a_sync_mode(&self) -> Option<&crate::dcs::ClusterView> {
        let o = self.last.as_ref()?;
        let view = o.dcs.as_ref()?;
        (o.policy.sync.mode != crate::config::SyncMode::Off
            && !o.policy.pause
            && o.pg.is_replica()
            && view.leader.as_ref().is_some_and(|l| l.name != self.me.name))
        .then_some(view)
    }

    /// Leaving the synchronous standbys before a stop, out of the `sync` key already: the key
    /// names no standby yet while another member could become one. The leader takes a
    /// member out of the key before it changes `synchronous_standby_names`; stopping now, in
    /// `on` mode, would leave commits waiting for us until its next step names that member.
    fn awaiting_replacement(&self) -> bool {
        let Some(o) = &self.last else { return false };
        let Some(view) = &o.dcs else { return false };
        let Some(leader) = view.leader.as_ref().map(|l| l.name.as_str()) else {
            return false;
        };
        let key_names_nobody = view.sync.as_ref().is_none_or(|s| {
            s.value
                .members()
                .iter()
                .all(|n| *n == leader || *n == self.me.name)
        });
        key_names_nobody
            && view.members.iter().any(|(name, m)| {
                *name != self.me.name
                    && name != leader
                    && m.role.as_deref() == Some("replica")
                    && m.may_be_sync_standby()
            })
    }

    /// While leaving the synchronous standbys before a stop: the stop goes on once the key no
    /// longer lists us and names whoever replaces us (or there is no leader to ask), or at the
    /// bound.
    fn sync_release_step(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        self.handover_step(now);
        if let Some(until) = self.sync_settle_until
            && (now >= until || !self.holds_lock(now) || !self.sync_key_lets_nobody_take_over())
        {
            self.sync_settle_until = None;
            self.shutdown_step(now, out);
        }
        let Some(until) = self.sync_release_until else {
            return;
        };
        let fresh =
            self.observed_since_shutdown && self.last.as_ref().is_some_and(|o| o.dcs.is_some());
        if now < until && (!fresh || self.is_sync_standby() || self.awaiting_replacement()) {
            return;
        }
        self.sync_release_until = None;
        self.shutdown_step(now, out);
    }

    fn shutdown_step(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        if self.task.is_some()
            || self.finished
            || self.sync_release_until.is_some()
            || self.handover_until.is_some()
            || self.sync_settle_until.is_some()
        {
            return;
        }
        let up = self.pg_started || self.last.as_ref().is_some_and(|o| o.pg.up);
        if up {
            // Completion of the stop comes back through `task_done`, which releases the lock.
            self.emit(Action::StopGraceful, Purpose::Task, now, out);
            return;
        }
        if self.lease_deadline.is_some() {
            self.release(now, out);
        }
        if self.handover_until.is_none() {
            self.finished = true;
        }
    }

    /// After releasing the lock in a shutdown: done once the store names another leader, or
    /// at the bound.
    fn handover_step(&mut self, now: MonoTime) {
        let Some(until) = self.handover_until else {
            return;
        };
        let taken = self
            .last
            .as_ref()
            .and_then(|o| o.dcs.as_ref())
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name != self.me.name);
        // In a synchronous mode whose key lets nobody take over, nobody will race: staying
        // would only delay the restart that brings this member back as the one that may lead.
        if now < until && !taken && !self.sync_key_lets_nobody_take_over() {
            return;
        }
        self.handover_until = None;
        self.finished = true;
    }

    /// In a synchronous mode, the `sync` key as last read names fewer voters besides this
    /// member than its quorum needs (`quorum + 1`): nobody else may take over.
    fn sync_key_lets_nobody_take_over(&self) -> bool {
        let Some(o) = &self.last else { return false };
        o.policy.sync.mode != crate::config::SyncMode::Off
            && o.dcs
                .as_ref()
                .and_then(|v| v.sync.as_ref())
                .is_some_and(|s| {
                    let quorum = s.value.quorum.unwrap_or(0) as usize;
                    let voters = s.value.members().into_iter();
                    voters.filter(|n| *n != self.me.name).count() < quorum + 1
                })
    }
}

#[cfg(test)]
mod tests;
