//! Carrying out the HA core's actions. Store operations run inline, bounded by
//! `retry_timeout` and, while the lock is held, by the lease deadline; PostgreSQL tasks run in the
//! background and report back through the task channel.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout, timeout_at};
use tracing::Instrument;

use crate::dcs::{Failover, HistoryLine, Status, model::slot_name};
use crate::ha::{Action, ActionId, MonoTime, Outcome};
use crate::postgres::{StartAs, StopMode, TimelineSwitch, conf};

use super::settings::conn_url_host_port;
use super::{Agent, TaskDone};

impl Agent {
    /// Carries out actions in order, feeding every inline outcome back to the core (which
    /// may answer with more actions).
    pub(crate) async fn execute(&mut self, actions: Vec<(ActionId, Action)>) {
        let mut queue: std::collections::VecDeque<(ActionId, Action)> = actions.into();
        while let Some((id, action)) = queue.pop_front() {
            tracing::debug!(?id, ?action, "action");
            if let Some(outcome) = self.execute_one(id, action).await {
                tracing::debug!(?id, ?outcome, "done");
                let more = self
                    .core
                    .step(crate::ha::Input::Completed { id, outcome }, self.mono_now());
                // At once, not after the whole batch: a renewed deadline reaches the fence
                // before the next action (a peer probe, a slow store call) can outlast the old.
                self.arm_fence();
                for (id, action) in more {
                    // A stop the outcome calls for (the lease lapsed while this call ran) goes
                    // before what is still queued from the batch (a peer probe, a store call).
                    if action == Action::StopNow {
                        queue.push_front((id, action));
                    } else {
                        queue.push_back((id, action));
                    }
                }
                // The watchdog failed while this call ran: what the core makes of it (a stop)
                // goes first.
                if self.watchdog_rx.has_changed().unwrap_or(false) {
                    for a in self.watchdog_input().into_iter().rev() {
                        queue.push_front(a);
                    }
                }
            }
        }
        self.arm_fence();
    }

    /// Tells the fence the core's lease deadline (or that there is none), and the tasks.
    pub(crate) fn arm_fence(&self) {
        let ttl = self.dynamic.ttl;
        let until = self.core.lease_deadline().map(|d| self.boottime_of(d));
        self.lease_until.store(
            until.map_or(0, |d| d.as_nanos() as u64),
            std::sync::atomic::Ordering::SeqCst,
        );
        self.fence
            .set(self.core.lease_deadline().map(|d| super::fence::Armed {
                deadline: self.boottime_of(d),
                ttl,
            }));
    }

    /// One action; `None` when it runs as a background task.
    async fn execute_one(&mut self, id: ActionId, action: Action) -> Option<Outcome> {
        let retry = self.policy().retry_timeout;
        let until = self.call_bound();
        let dcs = self.dcs.clone();
        match action {
            Action::StopNow => {
                self.processes.kill_all();
                self.upstream = None;
                Some(Outcome::Ok)
            }
            Action::AcquireLock => {
                let sent_at = self.mono_now();
                let r = timeout_at(until, dcs.acquire_leader()).await;
                Some(lock_outcome(r, sent_at))
            }
            Action::RenewLock { deadline } => {
                let sent_at = self.mono_now();
                let until = self.instant_of(deadline).min(Instant::now() + retry);
                let status = self.leader_status();
                let r = timeout_at(until, dcs.update_leader(status.as_ref())).await;
                Some(lock_outcome(r, sent_at))
            }
            Action::ReleaseLock { version } => {
                let status = self.leader_status();
                let r =
                    timeout_at(until, dcs.release_leader(status.as_ref(), version.as_ref())).await;
                Some(dcs_outcome(r.map(|r| r.map(|_| ()))))
            }
            Action::ClaimInitialize => {
                let r = timeout_at(until, dcs.initialize(true, "")).await;
                Some(match r {
                    Ok(Ok(true)) => Outcome::Ok,
                    Ok(Ok(false)) => Outcome::Declined,
                    Ok(Err(e)) => Outcome::Failed(e.to_string()),
                    Err(_) => Outcome::Failed("timeout".into()),
                })
            }
            Action::WriteInitialize { sysid } => {
                let r = timeout_at(until, dcs.initialize(false, &sysid)).await;
                Some(dcs_outcome(r.map(|r| r.map(|_| ()))))
            }
            Action::SeedConfig => {
                let seed = self
                    .cfg
                    .bootstrap
                    .as_ref()
                    .map(|b| b.dcs.clone())
                    .unwrap_or_default();
                let json = serde_json::to_string(&seed).unwrap_or_else(|_| "{}".into());
                let r = timeout_at(until, dcs.set_config(&json, None)).await;
                if let Ok(Err(e)) = &r {
                    tracing::warn!("could not write the initial configuration: {e}");
                }
                Some(dcs_outcome(r.map(|r| r.map(|_| ()))))
            }
            Action::WriteHistory { timeline } => {
                // No task holds PostgreSQL (the core asks between tasks, as the leader).
                let switches = self.pg.lock().await.timeline_history(timeline);
                let switches = match switches {
                    Ok(switches) => switches,
                    Err(e) => {
                        tracing::warn!("could not write history: {e}");
                        return Some(Outcome::Failed(e.to_string()));
                    }
                };
                let known = self.view.as_ref().and_then(|v| v.history.clone());
                let lines = history_lines(
                    known.unwrap_or_default(),
                    &switches,
                    (&self.cfg.name, self.clock.wall()),
                    self.dynamic.max_timelines_history as usize,
                );
                let r = timeout_at(until, dcs.set_history(&lines)).await;
                if let Ok(Err(e)) = &r {
                    tracing::warn!("could not write history: {e}");
                }
                Some(dcs_outcome(r))
            }
            Action::CancelInitialize => {
                let r = timeout_at(until, dcs.cancel_initialization()).await;
                Some(dcs_outcome(r))
            }
            Action::ReleaseSync => {
                // Published by the cycles that follow (the shutdown keeps cycling meanwhile).
                self.sync_released = true;
                Some(Outcome::Ok)
            }
            Action::ClearFailover { version } => {
                let r = timeout_at(
                    until,
                    dcs.set_failover(&Failover::default(), version.as_ref()),
                )
                .await;
                Some(dcs_outcome(r.map(|r| r.map(|_| ()))))
            }
            Action::WriteSync { value, version } => {
                let r = timeout_at(until, dcs.set_sync(&value, version.as_ref())).await;
                Some(match r {
                    Ok(Ok(false)) => Outcome::Declined,
                    r => dcs_outcome(r.map(|r| r.map(|_| ()))),
                })
            }
            Action::SetSyncStandbyNames { value } => {
                // No task holds PostgreSQL (the core sets it between tasks).
                let mut pg = self.pg.lock().await;
                let r = timeout_at(until, pg.set_sync_standby_names(value)).await;
                Some(pg_outcome(r, "setting synchronous_standby_names", retry))
            }
            Action::WriteFailsafe { value } => {
                let r = timeout_at(until, dcs.set_failsafe(&value)).await;
                Some(match r {
                    Ok(Ok(false)) => Outcome::Declined,
                    r => dcs_outcome(r.map(|r| r.map(|_| ()))),
                })
            }
            Action::ConfirmFailsafe { members } => {
                let sent_at = self.mono_now();
                // The URLs as this member publishes them in its member key.
                let me = self.member_value();
                let body = serde_json::json!({
                    "name": self.cfg.name,
                    "conn_url": me.conn_url,
                    "api_url": me.api_url,
                    "ttl": self.dynamic.ttl.as_secs_f64(),
                });
                let names: Vec<String> = members.iter().map(|(n, _)| n.clone()).collect();
                // Bounded by the deadline, like every call of a leader: no answer in time is
                // no confirmation.
                let asked = self.peers.confirm_failsafe(members, body);
                let refused = match self.core.lease_deadline() {
                    Some(d) => timeout_at(self.instant_of(d), asked).await.unwrap_or(names),
                    None => names,
                };
                Some(Outcome::Failsafe { refused, sent_at })
            }
            Action::ProbePeers { names } => {
                // Probes take up to 2 s; a leader's never outlast its deadline (no answer then
                // reads as "no candidate").
                let probe = self.probe_peers(&names);
                let report = match self.core.lease_deadline() {
                    Some(d) => timeout_at(self.instant_of(d), probe)
                        .await
                        .unwrap_or_default(),
                    None => probe.await,
                };
                Some(Outcome::Peers(report))
            }
            Action::Fatal { reason } => {
                self.fatal = Some(reason);
                Some(Outcome::Ok)
            }
            Action::ApplyConfig { .. } => {
                // No task holds PostgreSQL (the core applies between tasks).
                let settings = super::settings::pg_settings(&self.cfg, &self.dynamic);
                let mut pg = self.pg.lock().await;
                pg.update_settings(settings);
                Some(match pg.is_running() {
                    true => pg_outcome(
                        timeout_at(until, pg.reload()).await,
                        "reloading after a configuration change",
                        retry,
                    ),
                    false => Outcome::Ok,
                })
            }
            Action::EnsureSlots { members } => {
                // No task holds PostgreSQL (the core asks between tasks, as the leader).
                let slots: Vec<String> = members.iter().map(|m| slot_name(m)).collect();
                let pg = self.pg.lock().await;
                let r = timeout_at(until, pg.ensure_replication_slots(&slots)).await;
                Some(pg_outcome(r, "creating replication slots", retry))
            }
            Action::Answer { id, result } => {
                self.answer(id, result);
                Some(Outcome::Ok)
            }
            task => {
                self.spawn_task(id, task);
                None
            }
        }
    }

    /// The `status` value a leader publishes with its lock.
    fn leader_status(&self) -> Option<Status> {
        let s = self.seen.status.as_ref()?;
        (!s.in_recovery).then(|| Status {
            optime: s.wal_position,
            ..Status::default()
        })
    }

    /// Connection string to a member's PostgreSQL, with replication credentials.
    pub(crate) fn conninfo_of(&self, member: &str) -> Option<String> {
        let m = self.view.as_ref()?.members.get(member)?;
        let (host, port) = conn_url_host_port(m.conn_url.as_deref()?)?;
        let creds = crate::postgres::Credentials {
            username: self
                .cfg
                .postgresql
                .authentication
                .replication
                .username
                .clone(),
            password: self
                .cfg
                .postgresql
                .authentication
                .replication
                .password
                .clone(),
        };
        Some(conf::conninfo_for(&host, port, &creds, &self.cfg.name))
    }

    fn my_slot(&self) -> Option<String> {
        self.dynamic.use_slots.then(|| slot_name(&self.cfg.name))
    }

    fn spawn_task(&mut self, id: ActionId, task: Action) {
        let pg = self.pg.clone();
        let tx = self.tasks_tx.clone();
        let primary = self.seen.status.as_ref().is_some_and(|s| !s.in_recovery);
        let stop_timeout = super::settings::stop_timeout(&self.cfg, &self.dynamic, primary);
        let slot = self.my_slot();
        let leased = Leased {
            until: self.lease_until.clone(),
            clock: self.clock.clone(),
        };
        let post_bootstrap = self
            .cfg
            .bootstrap
            .as_ref()
            .and_then(|b| b.post_bootstrap.clone().or_else(|| b.post_init.clone()));
        let upstream_conninfo = match &task {
            Action::Clone { from } | Action::Rewind { from } => self.conninfo_of(from),
            Action::StartReplica { upstream: Some(u) }
            | Action::Follow { upstream: u }
            | Action::Restart {
                upstream: Some(u), ..
            } => self.conninfo_of(u),
            _ => None,
        };
        let upstream_name = match &task {
            Action::StartReplica { upstream } | Action::Restart { upstream, .. } => {
                upstream.clone()
            }
            Action::Follow { upstream } => Some(upstream.clone()),
            _ => None,
        };
        tracing::info!(?task, "starting task");
        // Peers asking from now on see the task (a start as the primary counts as a primary).
        self.publish_snapshot();
        let task_run = async move {
            let mut pg = pg.lock().await;
            let result: Result<TaskNote, String> = match &task {
                Action::Bootstrap => pg
                    .initdb()
                    .await
                    .map(|_| TaskNote::None)
                    .map_err(|e| e.to_string()),
                Action::Clone { .. } => match upstream_conninfo {
                    Some(c) => pg
                        .basebackup(&c)
                        .await
                        .map(|_| TaskNote::None)
                        .map_err(|e| e.to_string()),
                    None => Err("no connection address for the clone source".into()),
                },
                Action::Rewind { .. } => match upstream_conninfo {
                    Some(c) => pg
                        .rewind(&c)
                        .await
                        .map(|_| TaskNote::None)
                        .map_err(|e| e.to_string()),
                    None => Err("no connection address for the rewind source".into()),
                },
                Action::RemoveDataDir => pg
                    .remove_data_dir()
                    .map(|_| TaskNote::None)
                    .map_err(|e| e.to_string()),
                Action::StartPrimary { bootstrapped } => {
                    let mut r = match leased.holds() {
                        true => pg.start(StartAs::Primary).await.map_err(|e| e.to_string()),
                        false => Err(LEASE_PASSED.into()),
                    };
                    if r.is_ok() && *bootstrapped {
                        r = pg.post_bootstrap(post_bootstrap.as_deref()).await;
                    }
                    // (Slots for the replicas: the core's `EnsureSlots`, in the cycle right after.)
                    r.map(|_| TaskNote::Started { upstream: None })
                }
                Action::StartReplica { .. } => pg
                    .start(StartAs::Replica {
                        primary_conninfo: upstream_conninfo,
                        slot,
                    })
                    .await
                    .map(|_| TaskNote::Started {
                        upstream: upstream_name,
                    })
                    .map_err(|e| e.to_string()),
                Action::Follow { .. } => pg
                    .follow(upstream_conninfo, slot)
                    .await
                    .map(|_| TaskNote::Started {
                        upstream: upstream_name,
                    })
                    .map_err(|e| e.to_string()),
                Action::Promote => {
                    let promoted = match leased.holds() {
                        true => pg.promote().await.map_err(|e| e.to_string()),
                        false => Err(LEASE_PASSED.into()),
                    };
                    match promoted {
                        Ok(()) => {
                            // The post-promote checkpoint puts the new timeline into
                            // pg_control, which is what pg_rewind on the old primary reads.
                            if let Err(e) = pg.checkpoint().await {
                                tracing::warn!("checkpoint after promote failed: {e}");
                            }
                            Ok(TaskNote::Started { upstream: None })
                        }
                        Err(e) => Err(e),
                    }
                }
                Action::StopGraceful => {
                    // A checkpoint first makes the shutdown checkpoint short, so the write
                    // gap of a switchover is the time of a fast stop.
                    let _ = timeout(Duration::from_secs(30), pg.checkpoint()).await;
                    pg.stop(StopMode::Fast, stop_timeout)
                        .await
                        .map(|_| TaskNote::Stopped)
                        .map_err(|e| e.to_string())
                }
                Action::Restart { primary, .. } => {
                    let how = if *primary {
                        StartAs::Primary
                    } else {
                        StartAs::Replica {
                            primary_conninfo: upstream_conninfo,
                            slot,
                        }
                    };
                    let restarted = async {
                        pg.stop(StopMode::Fast, stop_timeout)
                            .await
                            .map_err(|e| e.to_string())?;
                        if *primary && !leased.holds() {
                            return Err(LEASE_PASSED.to_owned());
                        }
                        pg.start(how).await.map_err(|e| e.to_string())
                    };
                    restarted.await.map(|_| TaskNote::Started {
                        upstream: upstream_name,
                    })
                }
                Action::Reinitialize => {
                    let wiped = async {
                        pg.stop(StopMode::Immediate, Duration::from_secs(30))
                            .await?;
                        pg.wipe_data_dir()
                    };
                    wiped
                        .await
                        .map(|_| TaskNote::Stopped)
                        .map_err(|e| e.to_string())
                }
                other => Err(format!("not a task: {other:?}")),
            };
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(e) => {
                    tracing::error!(?task, "task failed: {e}");
                    Outcome::Failed(e.clone())
                }
            };
            // Let go of PostgreSQL before reporting, so the next observation sees it as it is.
            drop(pg);
            let _ = tx.send(TaskDone {
                id,
                outcome,
                note: result.unwrap_or(TaskNote::None),
            });
        };
        // The task logs in the agent's span (in the simulation, its member's name).
        tokio::spawn(task_run.in_current_span());
    }
}

const LEASE_PASSED: &str =
    "the leader lock's deadline passed before PostgreSQL could become writable";

/// The lease as the fence has it, for a task to check right before PostgreSQL becomes
/// writable: a start or a promotion that was under way when the deadline passed (StopNow
/// killed whatever was running then) must not make a primary after it.
struct Leased {
    until: Arc<std::sync::atomic::AtomicU64>,
    clock: Arc<dyn super::io::Clock>,
}

impl Leased {
    fn holds(&self) -> bool {
        let until = self.until.load(std::sync::atomic::Ordering::SeqCst);
        (self.clock.boottime().as_nanos() as u64) < until
    }
}

/// What a finished task tells the shell besides its outcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TaskNote {
    None,
    Started { upstream: Option<String> },
    Stopped,
}

fn lock_outcome(
    r: Result<Result<bool, crate::dcs::DcsError>, tokio::time::error::Elapsed>,
    sent_at: MonoTime,
) -> Outcome {
    match r {
        Ok(Ok(held)) => Outcome::Lock {
            held,
            answered: true,
            sent_at,
        },
        Ok(Err(e)) => {
            tracing::warn!("lock operation failed: {e}");
            Outcome::Lock {
                held: false,
                answered: false,
                sent_at,
            }
        }
        Err(_) => {
            tracing::warn!("lock operation timed out");
            Outcome::Lock {
                held: false,
                answered: false,
                sent_at,
            }
        }
    }
}

fn dcs_outcome(
    r: Result<Result<(), crate::dcs::DcsError>, tokio::time::error::Elapsed>,
) -> Outcome {
    match r {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(_) => Outcome::Failed("timeout".into()),
    }
}

/// An inline PostgreSQL call bounded by `after`: a failure or the timeout is logged (naming
/// `what` was being done) and reported.
fn pg_outcome(
    r: Result<Result<(), crate::postgres::PgError>, tokio::time::error::Elapsed>,
    what: &str,
    after: Duration,
) -> Outcome {
    let r = r.unwrap_or(Err(crate::postgres::PgError::Timeout {
        what: what.into(),
        after,
    }));
    match r {
        Ok(()) => Outcome::Ok,
        Err(e) => {
            tracing::warn!("{what} failed: {e}");
            Outcome::Failed(e.to_string())
        }
    }
}

/// The `history` key after a promotion: the lines it holds, then every switch of PostgreSQL's
/// timeline history it lacks, the newest naming us as the new leader (older ones we did not
/// witness are written short, as Patroni's own old lines are). With `keep` (Patroni's
/// `max_timelines_history`, 0 = all) only that many of the newest lines stay.
fn history_lines(
    mut lines: Vec<HistoryLine>,
    switches: &[TimelineSwitch],
    (me, now): (&str, chrono::DateTime<chrono::Utc>),
    keep: usize,
) -> Vec<HistoryLine> {
    let ts = now.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
    let recorded = lines.last().and_then(HistoryLine::timeline).unwrap_or(0);
    let newest = switches.last().map(|s| s.timeline);
    for s in switches.iter().filter(|s| s.timeline > recorded) {
        lines.push(match Some(s.timeline) == newest {
            true => HistoryLine::new(s.timeline, s.lsn, &s.reason, &ts, me),
            false => HistoryLine(vec![
                s.timeline.into(),
                s.lsn.into(),
                s.reason.clone().into(),
            ]),
        });
    }
    if keep > 0 && lines.len() > keep {
        lines.drain(..lines.len() - keep);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_its_lines_and_adds_the_missing_switches_the_newest_naming_us() {
        let known = vec![HistoryLine::new(1, 100, "r1", "t1", "b")];
        let switch = |timeline, lsn| TimelineSwitch {
            timeline,
            lsn,
            reason: "no recovery target specified".into(),
        };
        let now = chrono::DateTime::from_timestamp(0, 0).unwrap();
        let all = [switch(1, 99), switch(2, 200), switch(3, 300)];
        let lines = history_lines(known.clone(), &all, ("a", now), 0);
        let json = serde_json::to_string(&lines).unwrap();
        assert_eq!(
            json,
            r#"[[1,100,"r1","t1","b"],[2,200,"no recovery target specified"],[3,300,"no recovery target specified","1970-01-01T00:00:00.000000+00:00","a"]]"#
        );
        // Nothing missing: unchanged.
        assert_eq!(
            history_lines(known.clone(), &[switch(1, 99)], ("a", now), 0),
            known
        );
        // max_timelines_history: 2 keeps the newest two.
        let kept = history_lines(known, &all, ("a", now), 2);
        let tls: Vec<_> = kept.iter().filter_map(HistoryLine::timeline).collect();
        assert_eq!(tls, vec![2, 3]);
    }
}
