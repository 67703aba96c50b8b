//! `watchdog.mode: required`, Patroni's rule: a member becomes a writable primary only once its
//! watchdog is active, a primary whose watchdog fails is demoted, and a member whose device is
//! unusable neither races nor bootstraps. `off` and `automatic` never hold leadership back, and
//! neither does pause (Patroni turns the watchdog off while paused).

use super::{Action, ActionId, HaCore, MonoTime, Observation, Purpose, WatchdogState};

/// What the watchdog allows a lock holder now.
pub(super) enum Gate {
    /// Become or stay the primary.
    Go,
    /// Not yet: the device is opened once the lock is armed.
    Wait,
    /// Never with this device: give the lock up; the reason.
    Refuse(String),
}

impl HaCore {
    /// Called while holding the lock. A device that does not become active within
    /// `retry_timeout` (the fence process opens it in milliseconds) counts as unusable, so that
    /// a holder never sits on the lock unpromoted.
    pub(super) fn watchdog_gate(&mut self, obs: &Observation, now: MonoTime) -> Gate {
        let gate = match &obs.watchdog {
            _ if obs.policy.pause => Gate::Go,
            WatchdogState::Unneeded | WatchdogState::Active => Gate::Go,
            WatchdogState::Ready => {
                let since = *self.watchdog_wait_since.get_or_insert(now);
                if now.since(since) < obs.policy.retry_timeout {
                    return Gate::Wait;
                }
                Gate::Refuse(format!(
                    "not active {}s after taking the lock",
                    obs.policy.retry_timeout.as_secs()
                ))
            }
            WatchdogState::Unusable(why) => Gate::Refuse(why.clone()),
        };
        self.watchdog_wait_since = None;
        gate
    }

    /// Why this member must not race or bootstrap now, if it must not.
    pub(super) fn watchdog_forbids_race(&self, obs: &Observation, now: MonoTime) -> Option<String> {
        if obs.policy.pause {
            return None;
        }
        if let WatchdogState::Unusable(why) = &obs.watchdog {
            return Some(format!("the required watchdog is not usable: {why}"));
        }
        match self.watchdog_backoff_until {
            Some(t) if now < t => Some(format!(
                "the watchdog could not be activated; trying again in {}s",
                t.since(now).as_secs().max(1)
            )),
            _ => None,
        }
    }

    /// The fence says the watchdog's state changed: see [`Self::watchdog_demotes`].
    pub(super) fn watchdog_changed(
        &mut self,
        state: WatchdogState,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) {
        if let Some(last) = self.last.as_mut() {
            last.watchdog = state;
            self.watchdog_demotes(now, out);
        }
    }

    /// A lock holder that is (or is becoming) a primary and whose required device failed
    /// stops at once: before a renewal, which may wait for the store for up to
    /// `retry_timeout`, and whatever task runs. Everything else is left to the cycle.
    pub(super) fn watchdog_demotes(
        &mut self,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) -> bool {
        let Some(last) = self.last.as_ref() else {
            return false;
        };
        let (paused, ttl) = (last.policy.pause, last.policy.ttl);
        let WatchdogState::Unusable(why) = &last.watchdog else {
            return false;
        };
        let why = why.clone();
        if paused || self.shutting_down || !self.holds_lock(now) {
            return false;
        }
        let writable =
            self.maybe_writable() || self.task_in_flight().is_some_and(Action::makes_writable);
        if !writable {
            return false;
        }
        self.message = format!("demoting self because the watchdog could not be activated: {why}");
        self.watchdog_backoff_until = Some(now + ttl);
        self.give_up(now, out);
        true
    }

    /// The holder's required watchdog cannot be activated: a writable PostgreSQL is stopped at
    /// once and the lock goes once it is down; a replica keeps running and the lock goes now.
    pub(super) fn watchdog_refused(
        &mut self,
        obs: &Observation,
        why: &str,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) {
        self.watchdog_backoff_until = Some(now + obs.policy.ttl);
        if self.bootstrapping {
            self.bootstrapping = false;
            self.emit(Action::CancelInitialize, Purpose::Other, now, out);
        }
        if obs.pg.maybe_writable() {
            self.message =
                format!("demoting self because the watchdog could not be activated: {why}");
            self.give_up(now, out);
        } else {
            self.message =
                format!("not promoting self because the watchdog could not be activated: {why}");
            self.release_now(now, out);
        }
    }
}
