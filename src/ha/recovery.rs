//! A leader whose primary crashed: start it again, or hand over (Patroni's
//! `primary_start_timeout`). With 0, a leader whose PostgreSQL is found down gives the lock
//! up at once when another member could take over; otherwise a start as the primary that
//! takes longer than the timeout is stopped and the lock given up, again only when another
//! member could take over. Without such a member the leader keeps restarting, whatever the
//! timeout: a slow primary beats none.

use std::time::Duration;

use super::{Action, ActionId, HaCore, MonoTime, Observation};
use crate::config::SyncMode;
use crate::dcs::ClusterView;

/// Another member that, as the store shows it, could take over from `me`: running as a
/// replica, not tagged `nofailover`, not lagging the last known leader position by more than
/// `maximum_lag_on_failover`, and in a synchronous mode named by the `sync` key. The race
/// itself still decides; this only says whether giving the lock up is worth it.
fn candidate_exists(me: &str, obs: &Observation, view: &ClusterView) -> bool {
    let policy = &obs.policy;
    let voters: Vec<&str> = view
        .sync
        .as_ref()
        .map(|s| s.value.members())
        .unwrap_or_default();
    let optime = view.status.as_ref().map(|s| s.optime);
    view.members.iter().any(|(name, m)| {
        name != me
            && m.state.as_deref() == Some("running")
            && !m.is_primary_role()
            && !m.nofailover()
            && (policy.sync.mode == SyncMode::Off || voters.contains(&name.as_str()))
            && match (optime, m.xlog_location) {
                (Some(o), Some(x)) => o.saturating_sub(x) <= policy.maximum_lag_on_failover,
                _ => false,
            }
    })
}

impl HaCore {
    /// A leader holding the lock with PostgreSQL down and a primary's data directory: with
    /// `primary_start_timeout` 0 and a member that could take over, it gives the lock up
    /// (PostgreSQL is down: nothing to stop) instead of starting again. Whether it did.
    pub(super) fn crashed_primary_hands_over(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) -> bool {
        let timeout = obs.policy.primary_start_timeout;
        if !timeout.is_zero() || self.bootstrapping || !candidate_exists(&self.me.name, obs, view) {
            return false;
        }
        self.message = "primary_start_timeout is 0: failing over instead of restarting the \
                        crashed primary"
            .into();
        self.release(now, out);
        true
    }

    /// A start as the primary in flight for longer than `primary_start_timeout` while another
    /// member could take over: stop it and give the lock up. Whether it did.
    pub(super) fn start_timed_out(
        &mut self,
        obs: &Observation,
        view: &ClusterView,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) -> bool {
        let Some((
            _,
            Action::StartPrimary {
                bootstrapped: false,
            },
            since,
        )) = &self.task
        else {
            return false;
        };
        let took = now.since(*since);
        if took < obs.policy.primary_start_timeout.max(Duration::from_secs(1))
            || !candidate_exists(&self.me.name, obs, view)
        {
            return false;
        }
        self.message = format!(
            "PostgreSQL did not start as the primary within primary_start_timeout ({}s): \
             failing over",
            obs.policy.primary_start_timeout.as_secs()
        );
        self.give_up(now, out);
        true
    }
}
