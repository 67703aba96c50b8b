//! Failsafe mode (Patroni's `failsafe_mode`, §4.6): a primary that cannot reach the store
//! keeps running for as long as every member of the `failsafe` key confirms it.
//!
//! Why it is safe: a member that confirms (`POST /failsafe` answered `Accepted`) takes no lock
//! for one ttl from the moment it confirmed ([`FailsafeState::hold`]), and refuses to confirm
//! while it races, holds or may take a lock. The leader extends its deadline to
//! `sent + ttl - margin` from the send time of a round that *every* member of the key
//! confirmed, exactly as a lease renewal would (ha-safety rule 1): by then each of them still
//! holds off. The leader asks the union of the key as last read and what it wrote since (a
//! write whose read-back has not arrived may have landed). A member missing from the key was
//! never asked: it races only once every member the key names has answered that it is not a
//! primary; and every racer asks the key's members too, so a leader kept up this way answers
//! "primary" even when its member key has expired (`race_checks`). A confirmation lives in
//! memory only, so an agent holds off for one ttl after it starts (it may have confirmed a
//! leader just before it restarted).
//!
//! When the store answers again the leader renews as usual; if the store let the lock expire
//! meanwhile (the leader was cut off from the store alone), it takes the lock again while its
//! extended deadline holds, instead of treating the missing lock as taken away.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Action, ActionId, HaCore, MonoTime, Observation, Purpose};
use crate::dcs::ClusterView;

/// What the core remembers of failsafe mode between cycles.
#[derive(Debug, Default)]
pub(super) struct FailsafeState {
    /// The `failsafe` key as last read (empty when missing).
    read: BTreeMap<String, String>,
    /// The key as last read did not parse: failsafe mode cannot be used (never acted on).
    unreadable: bool,
    /// Every value written since a read last showed the latest one, merged: any of them may
    /// be in the store.
    written: BTreeMap<String, String>,
    /// The value written last.
    last_written: Option<BTreeMap<String, String>>,
    /// When the last round of confirmations was sent.
    asked_at: Option<MonoTime>,
    /// Every member confirmed the last round (published as `failsafe_mode_is_active`).
    pub(super) active: bool,
    /// Confirmations extended the lease past the store's: a view without a leader then means
    /// the store let the lock expire while we were cut off, not that it was taken.
    pub(super) extended: bool,
    /// The last lock operation went unanswered: the store is out of reach, whatever a read
    /// from a watch-fed cache says.
    pub(super) unanswered: bool,
    /// A member that confirmed a leader: the leader's name, and until when it takes no lock.
    hold: Option<(String, MonoTime)>,
    /// The first observation has been made.
    started: bool,
    /// The last view of the store named this data directory the cluster's (`initialize`).
    registered: bool,
}

impl FailsafeState {
    /// The members a leader cut off from the store must reach: everyone the key may name.
    fn topology(&self) -> Option<BTreeMap<String, String>> {
        if self.unreadable {
            return None;
        }
        let mut all = self.read.clone();
        all.extend(self.written.clone());
        Some(all)
    }

    /// A fresh read of the store.
    fn seen(&mut self, view: &ClusterView) {
        self.unreadable = view.unreadable("failsafe");
        self.read = view.failsafe.clone().unwrap_or_default();
        if self.last_written.as_ref() == Some(&self.read) {
            self.written.clear();
            self.last_written = None;
        }
    }
}

/// The `failsafe` key a leader publishes: every member with a REST API.
fn wanted(view: &ClusterView) -> BTreeMap<String, String> {
    view.members
        .iter()
        .filter_map(|(n, m)| Some((n.clone(), m.api_url.clone()?)))
        .collect()
}

impl HaCore {
    /// Failsafe mode's part of an observation.
    pub(super) fn failsafe_observed(&mut self, obs: &Observation, now: MonoTime) {
        if let Some(view) = &obs.dcs {
            self.failsafe.seen(view);
            self.failsafe.registered = matches!(
                &obs.pg.data,
                super::DataDir::Ready { sysid, .. } if view.initialize.as_deref() == Some(sysid)
            );
        }
        if !self.failsafe.started {
            self.failsafe.started = true;
            // The confirmation is remembered in memory only: an agent that restarted may have
            // given one a moment before, and its leader counts on it for a ttl.
            if obs.policy.failsafe_mode {
                let who = "a leader this member may have confirmed before it started".to_owned();
                self.failsafe.hold = Some((who, now + obs.policy.ttl));
            }
        }
    }

    /// Whether failsafe mode is keeping this primary up (for the REST API).
    pub fn failsafe_active(&self) -> bool {
        self.failsafe.active && self.lease_deadline.is_some()
    }

    /// A primary leader publishes who must confirm it when the store is out of reach. Never
    /// over a value that did not parse; only once our own member key shows.
    pub(super) fn publish_failsafe(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) {
        if !obs.policy.failsafe_mode || view.unreadable("failsafe") {
            return;
        }
        let want = wanted(view);
        let pending = self
            .pending
            .values()
            .any(|(a, _)| matches!(a, Action::WriteFailsafe { .. }));
        if !want.contains_key(&self.me.name) || view.failsafe.as_ref() == Some(&want) || pending {
            return;
        }
        self.failsafe.written.extend(want.clone());
        self.failsafe.last_written = Some(want.clone());
        self.emit(
            Action::WriteFailsafe { value: want },
            Purpose::Other,
            now,
            out,
        );
    }

    /// The store is out of reach: a primary leader in failsafe mode asks every other member of
    /// the key to confirm it (at most twice per loop_wait). Called at each tick, each
    /// observation and each unanswered lock operation; acts only while the last observation
    /// could not read the store or the last lock operation went unanswered.
    pub(super) fn ask_failsafe(&mut self, now: MonoTime, out: &mut Vec<(ActionId, Action)>) {
        let Some(obs) = &self.last else { return };
        let policy = &obs.policy;
        let primary = obs.pg.up && obs.pg.in_recovery == Some(false) && obs.pg.supervised;
        // Only a cluster the store has registered (`initialize` names it): a bootstrap that
        // may still lose to another member's is not kept writable past its lease.
        let unreachable = obs.dcs.is_none() || self.failsafe.unanswered;
        if !unreachable
            || !self.failsafe.registered
            || !policy.failsafe_mode
            || policy.pause
            || !primary
            || !self.holds_lock(now)
            || self.task.is_some()
            || self.shutting_down
        {
            return;
        }
        let asking = self
            .pending
            .values()
            .any(|(a, _)| matches!(a, Action::ConfirmFailsafe { .. }));
        let recent = self
            .failsafe
            .asked_at
            .is_some_and(|t| now.since(t) < policy.loop_wait / 2);
        if asking || recent {
            return;
        }
        let Some(topology) = self.failsafe.topology() else {
            self.message = "DCS is not accessible and the failsafe key is unreadable: keeping \
                            the primary only until the lock deadline"
                .into();
            return;
        };
        if !topology.contains_key(&self.me.name) {
            self.message = "DCS is not accessible and this member is not in the failsafe \
                            topology: keeping the primary only until the lock deadline"
                .into();
            return;
        }
        let purpose = Purpose::Failsafe {
            ttl: policy.ttl,
            margin: policy.safety_margin,
        };
        let members: Vec<(String, String)> = topology
            .into_iter()
            .filter(|(n, _)| *n != self.me.name)
            .collect();
        self.failsafe.asked_at = Some(now);
        self.emit(Action::ConfirmFailsafe { members }, purpose, now, out);
    }

    /// The answers to a round of confirmations.
    pub(super) fn failsafe_answered(
        &mut self,
        refused: Vec<String>,
        sent_at: MonoTime,
        (ttl, margin): (Duration, Duration),
        now: MonoTime,
    ) {
        let Some(policy) = self.last.as_ref().map(|o| o.policy.clone()) else {
            return;
        };
        let Some(deadline) = self.lease_deadline else {
            return;
        };
        if !refused.is_empty() {
            self.failsafe.active = false;
            self.message = format!(
                "DCS is not accessible and failsafe mode could not reach {}: keeping the \
                 primary only until the lock deadline",
                refused.join(", ")
            );
            return;
        }
        // As a renewal's (ha-safety rule 1): from the send time, the shorter ttl and the
        // larger margin of those in force at sending and now.
        let ttl = ttl.min(policy.ttl);
        let margin = margin.max(policy.safety_margin);
        let until = sent_at + ttl.saturating_sub(margin);
        if until > deadline && until > now {
            self.lease_deadline = Some(until);
            self.failsafe.extended = true;
        }
        self.failsafe.active = true;
        self.message = "continue to run as a leader because failsafe mode is enabled and all \
                        members are accessible"
            .into();
    }

    /// `POST /failsafe` from `leader`: confirm it, unless this member is or may become a
    /// primary itself. Confirmed, it takes no lock for the longer of its ttl and `ttl`.
    pub(super) fn failsafe_asked(
        &mut self,
        leader: &str,
        ttl: Option<Duration>,
        now: MonoTime,
    ) -> Result<(), String> {
        let own_ttl = self.last.as_ref().map_or(Duration::ZERO, |o| o.policy.ttl);
        let becoming_writable = self.task_in_flight().is_some_and(Action::makes_writable);
        if leader == self.me.name
            || self.lease_deadline.is_some()
            || self.maybe_writable()
            || becoming_writable
        {
            return Err("Running as a leader".into());
        }
        // A race under way (probing peers, taking the lock, claiming initialize) decided on a
        // view that knew nothing of this leader: confirming now could let both write.
        let racing = self.pending.values().any(|(a, p)| {
            matches!(
                a,
                Action::AcquireLock | Action::ClaimInitialize | Action::Bootstrap
            ) || matches!(p, Purpose::RaceProbe { .. })
        });
        if racing {
            return Err("racing for the leader lock".into());
        }
        let until = now + own_ttl.max(ttl.unwrap_or_default());
        let until = match &self.failsafe.hold {
            Some((_, t)) if *t > until => *t,
            _ => until,
        };
        self.failsafe.hold = Some((leader.to_owned(), until));
        Ok(())
    }

    /// This member confirmed a leader less than a ttl ago: it takes no lock of any kind (a
    /// race, a bootstrap's) before then.
    pub(super) fn failsafe_holds_off(&self, now: MonoTime) -> Option<String> {
        let (leader, until) = self.failsafe.hold.as_ref()?;
        (now < *until).then(|| {
            format!("failsafe mode: {leader} is the leader (it was confirmed less than a ttl ago)")
        })
    }
}

/// The failsafe key's part of a race, in failsafe mode: `(unlisted, listed)`.
///
/// `listed`: every other member the key names is asked too, even without a member key (it
/// expired with the session of a leader cut off from the store), and one that runs as a
/// primary stops the race (Patroni's rule): a leader kept up by failsafe mode is one of them.
/// That also covers a member whose clock jumped past the ttl it holds off for.
///
/// `unlisted`: a member the key does not name (it joined after the key was written, or the
/// key was written while its member key was missing) was never asked to confirm a leader.
/// Patroni never lets it race; pgwarden lets it once every member the key names has answered
/// that it is not a primary, so that a key naming only members that are gone does not block
/// every failover. Empty when this member is named.
pub(super) fn race_checks(me: &str, obs: &Observation) -> (Vec<String>, Vec<String>) {
    let Some(key) = obs.dcs.as_ref().and_then(|v| v.failsafe.as_ref()) else {
        return (Vec::new(), Vec::new());
    };
    if !obs.policy.failsafe_mode || key.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let listed: Vec<String> = key.keys().filter(|n| *n != me).cloned().collect();
    let unlisted = if key.contains_key(me) {
        Vec::new()
    } else {
        listed.clone()
    };
    (unlisted, listed)
}

/// Why the race must not go on: a member of the failsafe key runs as a primary, or (for an
/// unlisted racer) did not answer.
pub(super) fn race_blocked(
    unlisted: &[String],
    listed: &[String],
    report: &super::PeerReport,
) -> Option<String> {
    let unanswered = unlisted
        .iter()
        .find(|n| report.get(*n).is_none_or(Option::is_none));
    if let Some(n) = unanswered {
        return Some(format!(
            "this member is not in the failsafe topology and {n}, which is, did not answer"
        ));
    }
    listed
        .iter()
        .chain(unlisted)
        .find_map(|n| match report.get(n) {
            Some(Some(p)) if p.is_primary => Some(format!(
                "Primary ({n}) is still alive (a member of the failsafe topology)"
            )),
            _ => None,
        })
}
