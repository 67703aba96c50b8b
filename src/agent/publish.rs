//! What the agent tells others: its member key in the store and the snapshot the REST API
//! answers from.

use serde_json::Value;
use tokio::time::Instant;

use crate::api::state::{PgView, Snapshot};
use crate::dcs::Member;
use crate::ha::DataDir;

use super::Agent;

/// Patroni's state string for what the agent is doing.
fn pg_state(agent: &Agent) -> &'static str {
    use crate::ha::Action;
    match agent.core.task_in_flight() {
        Some(Action::Bootstrap) => "initializing new cluster",
        Some(Action::Clone { .. }) | Some(Action::RemoveDataDir) => "creating replica",
        Some(Action::StartPrimary { .. }) | Some(Action::StartReplica { .. }) => "starting",
        Some(Action::StopGraceful) => "stopping",
        _ if agent.seen.up && agent.seen.status.is_some() => "running",
        _ if agent.seen.up => "starting",
        _ => "stopped",
    }
}

fn pg_role(agent: &Agent) -> &'static str {
    // Patroni's role while `pg_ctl promote` runs, and while PostgreSQL starts as the primary:
    // peers must count it as a primary already, or a racer (after the lock was deleted by hand)
    // could take a lock this member is about to write under.
    match agent.core.task_in_flight() {
        Some(crate::ha::Action::Promote) => return "promoted",
        Some(a) if a.makes_writable() => return "primary",
        _ => {}
    }
    match (&agent.seen.status, &agent.seen.data) {
        (Some(s), _) if agent.seen.up => {
            if s.in_recovery {
                "replica"
            } else {
                "primary"
            }
        }
        (_, Some(DataDir::Empty)) | (_, None) => "uninitialized",
        _ => "replica",
    }
}

impl Agent {
    /// This member's key, as Patroni writes it.
    pub(crate) fn member_value(&self) -> Member {
        let status = self.seen.status.as_ref().filter(|_| self.seen.up);
        let state = pg_state(self);
        let mut m = Member {
            conn_url: Some(format!(
                "postgres://{}/postgres",
                self.cfg.postgresql.connect_address
            )),
            api_url: Some(format!(
                "{}://{}/patroni",
                if crate::api::tls::enabled(&self.cfg.restapi) {
                    "https"
                } else {
                    "http"
                },
                self.cfg.restapi.connect_address
            )),
            state: Some(state.into()),
            role: Some(pg_role(self).into()),
            version: Some(crate::api::state::VERSION.into()),
            ..Member::default()
        };
        if let Some(s) = status {
            m.xlog_location = Some(s.wal_position);
            if s.in_recovery {
                m.receive_lsn = s.receive_lsn;
                m.replay_lsn = s.replay_lsn;
                m.replication_state = s.replication_state.clone();
            }
            m.timeline = Some(s.timeline);
            if s.pending_restart {
                m.pending_restart = Some(true);
            }
        }
        if matches!(self.core.task_in_flight(), Some(crate::ha::Action::Promote)) {
            m.checkpoint_after_promote = Some(false);
        }
        let mut tags: serde_json::Map<String, Value> = self
            .cfg
            .tags
            .iter()
            .filter(|(_, v)| !matches!(v, Value::Bool(false) | Value::Null))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.sync_released {
            // Patroni's release before a stop: the effective tags say nosync.
            tags.insert("nosync".into(), Value::Bool(true));
        }
        if !tags.is_empty() {
            m.tags = Some(tags);
        }
        m
    }

    /// Touches the member key every cycle (that keeps this member's session alive; the store
    /// skips writes of an unchanged value), with a new value when something other than WAL
    /// positions changed, or when positions moved and `loop_wait` has passed since they were
    /// last published: a replica does not rewrite its key every cycle because WAL moved.
    pub(crate) async fn publish_member(&mut self) {
        let fresh = self.member_value();
        let mut shape = fresh.clone();
        shape.xlog_location = None;
        shape.receive_lsn = None;
        shape.replay_lsn = None;
        let shape = shape.to_json();
        let due = self
            .last_member_write
            .is_none_or(|t| t.elapsed() >= self.policy().loop_wait);
        let m = match &self.last_member {
            Some(old) if Some(&shape) == self.last_member_shape.as_ref() && !due => old.clone(),
            _ => fresh,
        };
        // Bounded like every wait of the loop: a leader's by its deadline too.
        let until = self.call_bound();
        let (dcs, value) = (self.dcs.clone(), m.clone());
        let write = async move { dcs.touch_member(&value).await };
        match self.wait_store(until, write).await {
            Some(Ok(())) => {
                if self.last_member.as_ref() != Some(&m) {
                    self.last_member_write = Some(Instant::now());
                }
                self.last_member_shape = Some(shape);
                self.last_member = Some(m);
            }
            Some(Err(e)) => tracing::warn!("could not write the member key: {e}"),
            None => tracing::warn!("writing the member key timed out"),
        }
    }

    /// Publishes the REST API snapshot.
    pub(crate) fn publish_snapshot(&self) {
        let now = Instant::now();
        let mut s = Snapshot::new(self.cfg.scope.clone(), self.cfg.name.clone());
        let status = self.seen.status.as_ref().filter(|_| self.seen.up);
        s.pg = PgView {
            state: pg_state(self).into(),
            role: pg_role(self).into(),
            status: status.cloned(),
            sysid: match &self.seen.data {
                Some(DataDir::Ready { sysid, .. }) => Some(sysid.clone()),
                _ => None,
            },
        };
        s.lock_valid_until = self
            .core
            .lease_deadline()
            .map(|d| self.instant_of(d))
            .filter(|d| *d > now);
        s.cluster = self.view.clone();
        s.cluster_valid_until = self.view_read_at.map(|t| t + self.policy().ttl);
        s.dcs_last_seen = self.dcs_last_seen;
        s.tags = self.cfg.tags.clone();
        s.watchdog_failed = matches!(
            self.fence.watchdog_state(),
            crate::ha::WatchdogState::Unusable(_)
        );
        s.failsafe_active = self.core.failsafe_active();
        s.pause = self.dynamic.pause;
        s.ttl = self.dynamic.ttl;
        s.loop_wait = self.dynamic.loop_wait;
        s.maximum_lag_on_failover = self.dynamic.maximum_lag_on_failover;
        s.next_cycle_at = Some(self.instant_of(self.core.next_wakeup()).max(now));
        let optime = self
            .view
            .as_ref()
            .and_then(|v| v.status.as_ref())
            .map(|st| st.optime);
        let received = status.and_then(|s| s.receive_lsn);
        s.leader_optime = match (optime, received) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.api.publish(s);
    }
}
