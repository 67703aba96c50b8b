//! API requests the core decides on: `POST /restart` and `POST /reinitialize` (their request
//! conditions, such as `role` or `postgres_version`, are the API's). Each runs as a task, so
//! the loop keeps renewing the lock while it runs; the answer goes back when the task ends.
//! `POST /failsafe` is answered at once (see `failsafe`).

use super::{Action, ActionId, HaCore, MonoTime, Outcome, Purpose, Request, RequestId};

impl HaCore {
    pub(super) fn requested(
        &mut self,
        id: RequestId,
        request: Request,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) {
        let refuse = |core: &mut HaCore, why: &str, out: &mut Vec<(ActionId, Action)>| {
            let result = Err(why.to_owned());
            core.emit(Action::Answer { id, result }, Purpose::Other, now, out);
        };
        let Some(obs) = self.last.clone() else {
            return refuse(
                self,
                "not ready: PostgreSQL has not been looked at yet",
                out,
            );
        };
        let task = match request {
            Request::Failsafe { leader, ttl } => {
                let result = self.failsafe_asked(&leader, ttl, now);
                self.emit(Action::Answer { id, result }, Purpose::Other, now, out);
                return;
            }
            Request::Restart => {
                if self.task.is_some() || self.shutting_down {
                    return refuse(self, "restart already in progress", out);
                }
                if !obs.pg.up {
                    return refuse(self, "postgres is not running", out);
                }
                // A holder whose server is still a replica (a promotion waiting for the
                // watchdog, say) comes back as a replica: a restart never promotes.
                let primary = self.holds_lock(now) && !obs.pg.is_replica();
                let upstream = if primary {
                    None
                } else {
                    obs.pg.upstream.clone()
                };
                self.message = "restarting PostgreSQL on request".into();
                Action::Restart { primary, upstream }
            }
            Request::Reinitialize => {
                if self.holds_lock(now) || self.dcs_says_holder() {
                    return refuse(self, "I am the leader, can not reinitialize", out);
                }
                if obs.dcs.as_ref().is_none_or(|v| v.leader.is_none()) {
                    return refuse(self, "Cluster has no leader, can not reinitialize", out);
                }
                if obs.policy.pause {
                    return refuse(
                        self,
                        "reinitialize is not supported in the paused state yet",
                        out,
                    );
                }
                if self.task.is_some() || self.shutting_down {
                    return refuse(self, "reinitialize already in progress", out);
                }
                self.message = "reinitializing: removing the data directory".into();
                Action::Reinitialize
            }
        };
        let action = self.emit(task, Purpose::Task, now, out);
        self.requests.insert(action, id);
    }

    /// The task that carried out `request` ended with `outcome`.
    pub(super) fn answer(
        &mut self,
        request: RequestId,
        action: &Action,
        outcome: &Outcome,
        now: MonoTime,
        out: &mut Vec<(ActionId, Action)>,
    ) {
        let result = match (outcome, action) {
            (Outcome::Ok, _) => Ok(()),
            (_, Action::Reinitialize) => Err("reinitialize failed".to_owned()),
            _ => Err("restart failed".to_owned()),
        };
        let id = request;
        self.emit(Action::Answer { id, result }, Purpose::Other, now, out);
    }
}
