//! One HA cycle over a fresh observation (Patroni §4.2–4.5), as a method of [`HaCore`].
//!
//! Each branch ends the cycle with a message saying what was decided; the actions it emits are
//! carried out by the shell and answered through `HaCore::step`.

use std::collections::BTreeSet;

use super::race;
use super::sync;
use super::watchdog::Gate;
use super::{Action, Countdown, DataDir, HaCore, MonoTime, Observation, Purpose};
use crate::dcs::{ClusterView, Failover};

impl HaCore {
    /// Runs one cycle on `self.last`.
    pub(super) fn cycle(&mut self, now: MonoTime, out: &mut Vec<(super::ActionId, Action)>) {
        let Some(obs) = self.last.clone() else { return };
        // Shutting down, only a synchronous leader waiting for its key to settle still leads.
        if self.shutting_down && self.sync_settle_until.is_none() {
            return;
        }
        self.scheduled_wake = None;
        let Some(view) = obs.dcs.as_ref() else {
            if self.holds_lock(now)
                && obs.pg.maybe_writable()
                && let Gate::Refuse(why) = self.watchdog_gate(&obs, now)
            {
                // Not even until the deadline: the lock goes once the store answers again.
                return self.watchdog_refused(&obs, &why, now, out);
            }
            // Keep running as we are. A leader keeps writing only until its lease deadline,
            // which `step` enforces whatever the store does (failsafe mode may extend it).
            self.message = if self.holds_lock(now) {
                "DCS is not accessible: keeping the primary until the lock deadline".into()
            } else {
                "DCS is not accessible".into()
            };
            self.ask_failsafe(now, out);
            return;
        };
        let holder = view.leader.as_ref().is_some_and(|l| l.name == self.me.name);
        if holder && self.holds_lock(now) {
            self.lock_seen = true;
        }
        if self.lease_deadline.is_some()
            && view.leader.is_none()
            && self.failsafe.extended
            && view.vanished_leader.is_none()
        {
            // Failsafe mode kept us the primary while the store let the lock expire (we were
            // cut off from it alone): every member that could take it confirmed us and holds
            // off until our deadline. Take it again before then.
            self.message = "the leader lock expired while the DCS was not accessible (failsafe \
                            mode): taking it again"
                .into();
            if !self
                .pending
                .values()
                .any(|(a, _)| matches!(a, Action::AcquireLock))
            {
                self.emit(Action::AcquireLock, self.lock_purpose(false), now, out);
            }
            return;
        }
        if self.lease_deadline.is_some() && !holder && (self.lock_seen || view.leader.is_some()) {
            // The lock vanished (deleted by an operator or a tool) or another member holds it:
            // it is lost. Stop writing at once; never race for it while writable.
            self.drop_lease();
            let becoming_writable = self.task_in_flight().is_some_and(Action::makes_writable);
            self.message = match &view.leader {
                Some(l) => format!("{} holds the leader lock: stopping PostgreSQL now", l.name),
                None => "the leader lock vanished: stopping PostgreSQL now".into(),
            };
            if obs.pg.maybe_writable() || becoming_writable {
                self.emit(Action::StopNow, Purpose::Other, now, out);
            }
            return;
        }
        if holder && self.watchdog_demotes(now, out) {
            return;
        }
        if holder && self.start_timed_out(&obs, view, now, out) {
            return;
        }
        if let Some((_, task, _)) = &self.task {
            let what = task_name(task);
            if holder {
                self.renew_if_due(&obs, now, out);
            }
            self.message = format!("{what} in progress");
            return;
        }
        if !self.pending.is_empty() {
            // A lock operation or a probe is still out; decide when it has answered.
            return;
        }
        if let Some(c) = &view.config
            && self.config_applied.as_ref() != Some(&c.version)
        {
            // No task holds PostgreSQL now: a change that came during one is applied here.
            let version = c.version.clone();
            self.emit(Action::ApplyConfig { version }, Purpose::Other, now, out);
        }
        if self.sync_overridden && !holder {
            // Our list belonged to our time as the leader: the configuration's again. (A
            // leader whose server went down keeps it: it restarts as the primary under the list
            // its key is true to.)
            self.emit(
                Action::SetSyncStandbyNames { value: None },
                Purpose::Other,
                now,
                out,
            );
        }
        let seen = view.leader.as_ref().map(|l| &l.version);
        if self.released.is_some() && seen != self.released.as_ref() {
            self.released = None;
        }
        if holder && self.released.is_some() {
            // A release whose answer was lost may still land; never hold that instance of the
            // lock again, and send the release again until it is gone.
            self.message = "releasing the lock".into();
            let version = self.released.clone();
            self.emit(Action::ReleaseLock { version }, Purpose::Other, now, out);
            return;
        }
        if self.give_up_lock {
            if obs.pg.up {
                self.message = "waiting for PostgreSQL to stop before releasing the lock".into();
                self.emit(Action::StopNow, Purpose::Other, now, out);
                return;
            }
            self.give_up_lock = false;
            if holder {
                self.message = "PostgreSQL is down: releasing the lock".into();
                self.release(now, out);
                return;
            }
        }
        match &obs.pg.data {
            DataDir::Invalid(reason) => {
                self.message = format!("data directory is not usable: {reason}");
                if holder {
                    self.release(now, out);
                }
            }
            DataDir::Empty => self.empty_data_dir(&obs, view, holder, now, out),
            DataDir::Ready { sysid, was_primary } => {
                if let Some(init) = view.initialize.as_deref()
                    && !init.is_empty()
                    && init != sysid
                {
                    let reason = format!(
                        "the data directory's system identifier {sysid} differs from the \
                             cluster's {init}: this member belongs to another cluster"
                    );
                    self.emit(Action::Fatal { reason }, Purpose::Other, now, out);
                    return;
                }
                if self.bootstrapping && self.initialize_is_ours() {
                    // The cluster's identifier is this data directory's: the bootstrap is
                    // over, there is no claim left to confirm (and none to lose).
                    self.bootstrapping = false;
                }
                if holder
                    && view.initialize.as_deref() != Some(sysid.as_str())
                    && self.holds_lock(now)
                    && (!self.bootstrapping || self.claim_confirmed)
                {
                    // Heal a wiped store, or finish a bootstrap.
                    self.write_initialize(view, sysid, now, out);
                } else if view.initialize.is_none() && view.leader.is_none() && obs.pg.up {
                    // An existing cluster adopted by pgwarden (or our own new one, whose claim
                    // expired while the store was away: nobody else claims it now).
                    self.write_initialize(view, sysid, now, out);
                }
                if view.leader.is_none() {
                    self.leaderless_since.get_or_insert(now);
                } else {
                    self.leaderless_since = None;
                }
                if obs.pg.up && !obs.pg.supervised && !(obs.policy.pause && obs.pg.is_replica()) {
                    // No dies-with-the-agent tie: restart it as our child before it may lead.
                    // (A replica found so in pause is left alone and never promoted.)
                    self.message =
                        "PostgreSQL was not started by pgwarden: restarting it under pgwarden"
                            .into();
                    self.restarting_unsupervised = true;
                    self.emit(Action::StopGraceful, Purpose::Task, now, out);
                    if holder {
                        self.renew_if_due(&obs, now, out);
                    }
                    return;
                }
                if obs.pg.up {
                    self.running(&obs, view, holder, now, out);
                } else {
                    self.stopped(&obs, view, holder, *was_primary, now, out);
                }
            }
        }
    }

    fn empty_data_dir(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        holder: bool,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        if holder {
            self.release(now, out);
        }
        if obs.policy.pause {
            self.message = "paused: not creating a data directory".into();
            return;
        }
        match (&view.leader, view.initialize.as_deref()) {
            (None, None) | (None, Some("")) if self.me.can_bootstrap && !self.me.nofailover => {
                if let Some(why) = self
                    .watchdog_forbids_race(obs, now)
                    .or_else(|| self.failsafe_holds_off(now))
                {
                    self.message = format!("not bootstrapping: {why}");
                    return;
                }
                // Claiming again while `initialize` is "" is how a claimant whose answer was
                // lost finds out the claim is its own: the store binds the claim to the
                // claimant's session and answers yes to its owner.
                self.message = "trying to bootstrap a new cluster".into();
                self.emit(Action::ClaimInitialize, Purpose::ClaimInitialize, now, out);
            }
            (Some(l), Some(sysid)) if !sysid.is_empty() && l.name != self.me.name => {
                let from = clone_source(view, &l.name, &self.me.name);
                self.message = format!("trying to clone from {from}");
                self.emit(Action::Clone { from }, Purpose::Task, now, out);
            }
            _ => self.message = "waiting for leader to bootstrap".into(),
        }
    }

    fn stopped(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        holder: bool,
        was_primary: bool,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        if obs.policy.pause {
            self.message = "paused: PostgreSQL is not running and pgwarden leaves it so".into();
            return;
        }
        match &view.leader {
            Some(_) if holder => {
                if !was_primary {
                    self.message =
                        "holding the lock with a replica's data directory: releasing it".into();
                    self.release(now, out);
                    self.emit(
                        Action::StartReplica { upstream: None },
                        Purpose::Task,
                        now,
                        out,
                    );
                } else if self.holds_lock(now)
                    && self.crashed_primary_hands_over(obs, view, now, out)
                {
                } else if self.holds_lock(now) {
                    match self.watchdog_gate(obs, now) {
                        Gate::Go => {
                            self.message =
                                "starting PostgreSQL as the primary (crash recovery)".into();
                            self.start_primary(now, out);
                        }
                        Gate::Wait => {
                            self.message =
                                "waiting for the watchdog before starting as primary".into()
                        }
                        Gate::Refuse(why) => self.watchdog_refused(obs, &why, now, out),
                    }
                } else {
                    // Confirm the lock before writing anything.
                    self.renew_if_due(obs, now, out);
                    self.message = "confirming the leader lock before starting as primary".into();
                }
            }
            Some(l) => {
                let leader = l.name.clone();
                let leader_ready = view.members.get(&leader).is_some_and(|m| {
                    m.is_primary_role() && m.checkpoint_after_promote != Some(false)
                });
                let was_primary = was_primary || self.needs_rewind;
                if was_primary && obs.policy.use_pg_rewind && !leader_ready {
                    // pg_rewind compares timelines from the source's control file, which shows
                    // the new timeline only after the post-promote checkpoint (Patroni's
                    // `checkpoint_after_promote`); rewinding earlier finds nothing to do.
                    self.message =
                        format!("waiting for {leader} to finish its promotion before pg_rewind");
                } else if was_primary && obs.policy.use_pg_rewind {
                    let blocked = self
                        .rewind_failed
                        .as_ref()
                        .filter(|(from, until)| *from == leader && now < *until);
                    match blocked {
                        Some(_) => self.message = "pg_rewind failed; retrying later".into(),
                        None if self
                            .rewind_failed
                            .as_ref()
                            .is_some_and(|(f, _)| *f == leader)
                            && obs.policy.remove_data_directory_on_rewind_failure =>
                        {
                            self.message =
                                "pg_rewind failed: removing the data directory to clone afresh"
                                    .into();
                            self.rewind_failed = None;
                            self.emit(Action::RemoveDataDir, Purpose::Task, now, out);
                        }
                        None => {
                            self.message = format!("rewinding from {leader}");
                            self.emit(Action::Rewind { from: leader }, Purpose::Task, now, out);
                        }
                    }
                } else {
                    self.message = format!("starting as a secondary following {leader}");
                    self.emit(
                        Action::StartReplica {
                            upstream: Some(leader),
                        },
                        Purpose::Task,
                        now,
                        out,
                    );
                }
            }
            None if self.bootstrapping => {
                // Our new cluster starts as the primary or not at all: started read-only, the
                // race could promote it before the store confirmed our claim on initialize.
                if let Some(why) = self.failsafe_holds_off(now) {
                    self.message = format!("bootstrapped, not taking the lock: {why}");
                    return;
                }
                if let Some(gone) = view.vanished_leader.as_deref()
                    && gone != self.me.name
                {
                    // As after the bootstrap itself: its holder may still commit until its
                    // deadline (the store forgets it once that has passed).
                    self.message = format!(
                        "bootstrapped, but the leader lock of {gone} vanished while {gone} may \
                         still be writable"
                    );
                    return;
                }
                self.message = "bootstrapped: taking the leader lock".into();
                self.emit(Action::AcquireLock, self.lock_purpose(true), now, out);
            }
            None => {
                // Start read-only; the race happens once PostgreSQL reports its position.
                self.message = "starting as a secondary (no leader yet)".into();
                self.emit(
                    Action::StartReplica { upstream: None },
                    Purpose::Task,
                    now,
                    out,
                );
            }
        }
    }

    fn running(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        holder: bool,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        match &view.leader {
            None => self.race(obs, view, now, out),
            Some(_) if holder => self.lead(obs, view, now, out),
            Some(l) => {
                let leader = l.name.clone();
                // Someone else holds the lock: whatever we believed, we are not the leader.
                self.drop_lease();
                if obs.pg.maybe_writable() {
                    // Paused or not: two writable primaries are never allowed.
                    self.message = format!("demoting self because {leader} holds the lock");
                    self.emit(Action::StopNow, Purpose::Other, now, out);
                } else if obs.pg.upstream.as_deref() != Some(leader.as_str()) {
                    self.not_streaming_since = None;
                    self.message = format!("following new leader {leader}");
                    self.emit(Action::Follow { upstream: leader }, Purpose::Task, now, out);
                } else if self.diverged(obs, view, &leader, now) {
                    // Not streaming for a while from a leader on a later timeline: this data
                    // directory most likely went past the leader's fork point (it was a
                    // primary, or promoted during a shutdown). pg_rewind finds out, and does
                    // nothing if it is not so.
                    self.needs_rewind = true;
                    self.not_streaming_since = None;
                    self.message =
                        format!("not streaming from {leader} on its timeline: stopping to rewind");
                    self.emit(Action::StopGraceful, Purpose::Task, now, out);
                } else {
                    self.message = format!(
                        "no action. I am ({}), a secondary, and following a leader ({leader})",
                        self.me.name
                    );
                }
            }
        }
    }

    /// A replica that has not streamed from `leader` for `ttl` while the leader runs on a later
    /// timeline than this replica's.
    fn diverged(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        leader: &str,
        now: MonoTime,
    ) -> bool {
        if obs.pg.streaming || !obs.policy.use_pg_rewind {
            self.not_streaming_since = None;
            return false;
        }
        let since = *self.not_streaming_since.get_or_insert(now);
        let leader_tl = view.members.get(leader).and_then(|m| m.timeline);
        let behind = matches!((leader_tl, obs.pg.timeline), (Some(l), Some(me)) if l > me);
        behind && now.since(since) >= obs.policy.ttl
    }

    fn race(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        if obs.policy.pause {
            self.message =
                "paused: no leader, and pgwarden does not race in maintenance mode".into();
            return;
        }
        if !obs.pg.supervised {
            self.message = "not racing: PostgreSQL was not started by pgwarden".into();
            return;
        }
        if let Some(why) = self.watchdog_forbids_race(obs, now) {
            self.message = format!("not racing: {why}");
            return;
        }
        if let Some(why) = self.failsafe_holds_off(now) {
            self.message = format!("not racing: {why}");
            return;
        }
        // In failsafe mode the members of the failsafe key are asked too, even without a
        // member key (see `failsafe::race_checks`).
        let (unlisted, listed) = super::failsafe::race_checks(&self.me.name, obs);
        match race::pre_race(&self.me, &obs.pg, view, &obs.policy) {
            Err(why) => self.message = why,
            Ok(peers) if peers.is_empty() && listed.is_empty() => {
                self.message = "acquiring the leader lock".into();
                self.emit(Action::AcquireLock, self.lock_purpose(true), now, out);
            }
            Ok(mut names) => {
                self.message = "probing peers before the leader race".into();
                let extra: Vec<String> = listed
                    .iter()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                names.extend(extra.iter().cloned());
                let purpose = Purpose::RaceProbe { unlisted, extra };
                self.emit(Action::ProbePeers { names }, purpose, now, out);
            }
        }
    }

    fn lead(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        self.renew_if_due(obs, now, out);
        if !self.holds_lock(now) {
            self.message = "confirming the leader lock".into();
            return;
        }
        match self.watchdog_gate(obs, now) {
            Gate::Go => {}
            Gate::Wait if obs.pg.is_replica() => {
                self.message = "waiting for the watchdog before promoting".into();
                return;
            }
            // A primary that holds the lock has armed the fence, which is opening the device.
            Gate::Wait => {}
            Gate::Refuse(why) => return self.watchdog_refused(obs, &why, now, out),
        }
        if obs.pg.is_replica() && !obs.pg.supervised {
            self.message =
                "not promoting: PostgreSQL was not started by pgwarden (paused); resume to restart it"
                    .into();
            return;
        }
        if obs.pg.is_replica() {
            self.message = "promoting: this member holds the lock".into();
            self.start_primary(now, out);
            return;
        }
        self.ensure_slots(obs, view, now, out);
        self.record_history(obs, view, now, out);
        self.publish_failsafe(obs, view, now, out);
        let sync_note = self.steer_sync(obs, view, now, out);
        if let Some(f) = &view.failover {
            if !self.switchover_due(obs, f, now, out) {
                return;
            }
            if self.switchover_requested(&f.value) {
                return self.start_switchover(view, &f.value, now, out);
            }
            // A key that names another leader, or names us as the candidate, is stale.
            let version = Some(f.version.clone());
            self.emit(Action::ClearFailover { version }, Purpose::Other, now, out);
        }
        self.message = format!(
            "no action. I am ({}), the leader with the lock",
            self.me.name
        );
        if let Some(note) = sync_note {
            self.message = format!("{}; synchronous replication: {note}", self.message);
        }
    }

    /// A primary leader with `use_slots` keeps a slot for every other member, made again when
    /// the membership changes and at every new leadership.
    fn ensure_slots(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        if !obs.policy.use_slots || obs.pg.in_recovery != Some(false) {
            return;
        }
        let members: Vec<String> = view
            .members
            .keys()
            .filter(|n| **n != self.me.name)
            .cloned()
            .collect();
        if self.slots_for.as_ref() != Some(&members) {
            self.emit(Action::EnsureSlots { members }, Purpose::Other, now, out);
        }
    }

    /// A primary leader's synchronous replication: one step of `sync::leader_step` per cycle,
    /// the cycles after one coming soon (a change takes a few steps, and the list must have
    /// settled before the key names anyone). Returns what it waits for, if anything.
    fn steer_sync(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) -> Option<String> {
        // The key is the cluster's: written only by a leader whose data directory the store
        // has registered (never by a bootstrap that may still be lost to another member's).
        if obs.pg.in_recovery != Some(false) || !self.initialize_is_ours() {
            self.sync_progress.clear();
            return None;
        }
        self.sync_mark =
            sync::next_mark(self.sync_mark.take(), &obs.pg, self.sync_names_set_at, now);
        self.sync_progress.observe(&obs.pg, now);
        let limit = sync::stall_limit(obs.policy.loop_wait, obs.policy.retry_timeout);
        let stalled = self.sync_progress.stalled(limit, now);
        let names = |set: &BTreeSet<&str>| set.iter().copied().collect::<Vec<_>>().join(",");
        let gone = sync::not_waited_for(
            stalled.clone(),
            &self.me.name,
            &obs.policy.sync,
            view,
            &obs.pg,
        );
        let pg = sync::without_standbys(&obs.pg, &gone);
        let stall_note = match (stalled.is_empty(), gone.is_empty()) {
            (true, _) => None,
            (false, false) => Some(format!(
                "{} confirmed no WAL for {} s or more: not waited for",
                names(&gone),
                limit.as_secs_f64()
            )),
            (false, true) => Some(format!(
                "{} confirmed no WAL for {} s or more, and no other standby can be waited for in strict mode: still waited for",
                names(&stalled),
                limit.as_secs_f64()
            )),
        };
        let step = sync::leader_step(
            &self.me.name,
            &obs.policy.sync,
            view,
            &pg,
            self.sync_mark.as_ref(),
            self.sync_overridden,
            now,
        );
        let (soon, note) = match step {
            sync::Step::Key(value) => {
                self.write_sync(view, value, Purpose::Other, now, out);
                (true, None)
            }
            sync::Step::Names(value) => {
                self.emit(
                    Action::SetSyncStandbyNames { value },
                    Purpose::Other,
                    now,
                    out,
                );
                (true, None)
            }
            // Waiting for a standby to confirm: look again soon while the list is new.
            sync::Step::Settled(note) => (
                note.is_some()
                    && self
                        .sync_mark
                        .as_ref()
                        .is_none_or(|m| now.since(m.at) < 3 * sync::SETTLE),
                note,
            ),
        };
        if soon {
            let at = now + sync::SETTLE;
            self.scheduled_wake = Some(self.scheduled_wake.map_or(at, |w| w.min(at)));
        }
        match (stall_note, note) {
            (Some(g), Some(n)) => Some(format!("{g}; {n}")),
            (g, n) => g.or(n),
        }
    }

    /// Writes the `sync` key over the version `view` shows.
    pub(super) fn write_sync(
        &mut self,
        view: &ClusterView,
        value: crate::dcs::SyncState,
        purpose: Purpose,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        let version = view.sync.as_ref().map(|s| s.version.clone());
        self.emit(Action::WriteSync { value, version }, purpose, now, out);
    }

    /// `initialize = sysid`, and with it a missing `config` from bootstrap.dcs (a new cluster,
    /// or a wiped store; never over a value we cannot read).
    fn write_initialize(
        &mut self,
        view: &ClusterView,
        sysid: &str,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        // In a synchronous mode the key is ours before the cluster is: from the moment the
        // store names this data directory, its commits count, and no member may take over
        // without the key's say.
        if let Some(policy) = self.last.as_ref().map(|o| o.policy.sync.clone())
            && let Some(value) = sync::ownership(&self.me.name, &policy, view)
        {
            self.write_sync(view, value, Purpose::Other, now, out);
            return;
        }
        // A bootstrap ends with this write, not before: until then the cluster is not
        // registered, and a lapse of the lease must find the claim still to be confirmed.
        self.bootstrapping = false;
        let sysid = sysid.to_owned();
        self.emit(Action::WriteInitialize { sysid }, Purpose::Other, now, out);
        if view.config.is_none() && !view.unreadable("config") {
            self.emit(Action::SeedConfig, Purpose::Other, now, out);
        }
    }

    /// The leader's timeline switches belong in `history` (Patroni's leader copies them each
    /// cycle): written after a promotion, and again on the cycles after one whose write failed
    /// or whose store was wiped. Never over a value we cannot read.
    fn record_history(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        let Some(timeline) = obs.pg.timeline else {
            return;
        };
        if obs.pg.in_recovery != Some(false)
            || view.timeline() >= timeline
            || view.unreadable("history")
        {
            return;
        }
        self.emit(Action::WriteHistory { timeline }, Purpose::Other, now, out);
    }

    /// Whether the failover key is for now. A scheduled one waits for its time (a wake-up is
    /// set for it), fires up to 1.5 × loop_wait late (Patroni's window) and is cleared as stale
    /// after that; one whose time cannot be read is never acted on.
    fn switchover_due(
        &mut self,
        obs: &Observation,
        f: &crate::dcs::Versioned<Failover>,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) -> bool {
        let Some(at) = f.value.scheduled_at.as_deref() else {
            return true;
        };
        match obs.switchover_at {
            Countdown::In(d) if !d.is_zero() => {
                self.scheduled_wake = Some(now + d);
                self.message = format!(
                    "Awaiting switchover at {at} (in {} seconds)",
                    d.as_secs_f64().round()
                );
                false
            }
            Countdown::In(_) => true,
            Countdown::Passed(d) if d <= obs.policy.loop_wait * 3 / 2 => true,
            Countdown::Passed(_) => {
                self.message = "Found a stale switchover value, cleaning up".into();
                let version = Some(f.version.clone());
                self.emit(Action::ClearFailover { version }, Purpose::Other, now, out);
                false
            }
            Countdown::Unscheduled | Countdown::Unreadable => {
                self.message =
                    format!("not acting on a switchover scheduled at an unreadable time: {at:?}");
                false
            }
        }
    }

    /// The key asks this leader to hand over (now: see `switchover_due`).
    fn switchover_requested(&self, f: &Failover) -> bool {
        let from_me = f.leader.as_deref().is_none_or(|l| l == self.me.name);
        let to_other = f.member.as_deref() != Some(self.me.name.as_str());
        from_me && to_other && !f.is_empty()
    }

    fn start_switchover(
        &mut self,
        view: &ClusterView,
        f: &Failover,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        // The API's rule (a request it accepted may have become impossible since).
        let switchover = f.leader.is_some();
        let candidates = match super::switchover::candidates(
            view,
            Some(&self.me.name),
            f.member.as_deref(),
            switchover,
        ) {
            Ok(names) => names.into_iter().map(str::to_owned).collect(),
            Err(e) => {
                self.message = format!("{}; clearing the request", e.message("switchover"));
                let version = view.failover.as_ref().map(|f| f.version.clone());
                self.emit(Action::ClearFailover { version }, Purpose::Other, now, out);
                return;
            }
        };
        self.message = "switchover requested: checking the candidate".into();
        let candidate = f.member.clone().unwrap_or_default();
        self.emit(
            Action::ProbePeers { names: candidates },
            super::Purpose::SwitchoverProbe { candidate },
            now,
            out,
        );
    }

    /// After probing the switchover candidate(s): demote gracefully if one is fit, else drop
    /// the request.
    pub(super) fn switchover_probed(
        &mut self,
        candidate: &str,
        report: &super::PeerReport,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        let Some(obs) = self.last.clone() else { return };
        let Some(view) = &obs.dcs else { return };
        let optime = obs.pg.wal_position;
        let fit = report.iter().any(|(name, p)| {
            (candidate.is_empty() || name == candidate)
                && p.as_ref().is_some_and(|p| {
                    p.running
                        && !p.nofailover
                        && !p.is_primary
                        && optime.saturating_sub(p.wal_position)
                            <= obs.policy.maximum_lag_on_failover
                })
        });
        if fit && self.holds_lock(now) {
            self.message = "switchover: demoting gracefully".into();
            self.emit(Action::StopGraceful, Purpose::Task, now, out);
        } else {
            self.message = "switchover is not possible: no good candidates have been found".into();
            let version = view.failover.as_ref().map(|f| f.version.clone());
            self.emit(Action::ClearFailover { version }, Purpose::Other, now, out);
        }
    }

    /// Renews the lock when a renewal is due: at most twice per `loop_wait`, so DCS events
    /// caused by our own writes do not turn into a storm of renewals.
    pub(super) fn renew_if_due(
        &mut self,
        obs: &Observation,
        now: MonoTime,
        out: &mut Vec<(super::ActionId, Action)>,
    ) {
        let due = match (self.lease_deadline, self.last_renew_sent) {
            (Some(_), Some(sent)) => now.since(sent) >= obs.policy.loop_wait / 2,
            _ => true,
        };
        if due
            && !self
                .pending
                .values()
                .any(|(a, _)| matches!(a, Action::RenewLock { .. }))
        {
            let deadline = self
                .lease_deadline
                .filter(|d| *d > now)
                .unwrap_or(now + obs.policy.retry_timeout);
            self.emit(
                Action::RenewLock { deadline },
                self.lock_purpose(false),
                now,
                out,
            );
        }
    }
}

/// Patroni's names for tasks in progress.
fn task_name(a: &Action) -> &'static str {
    match a {
        Action::Bootstrap => "bootstrap",
        Action::Clone { .. } => "clone",
        Action::Rewind { .. } => "rewind",
        Action::RemoveDataDir => "removing data directory",
        Action::StartPrimary { .. } | Action::StartReplica { .. } => "start",
        Action::Follow { .. } => "follow",
        Action::Promote => "promote",
        Action::StopGraceful => "stop",
        Action::Restart { .. } => "restart",
        Action::Reinitialize => "reinitialize",
        _ => "action",
    }
}

/// Clone from a running member tagged `clonefrom` (never the leader itself), else the leader.
fn clone_source(view: &ClusterView, leader: &str, me: &str) -> String {
    view.members
        .iter()
        .find(|(n, m)| {
            *n != leader
                && *n != me
                && m.state.as_deref() == Some("running")
                && m.tag("clonefrom").is_some_and(crate::dcs::model::truthy)
        })
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| leader.to_owned())
}
