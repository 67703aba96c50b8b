//! The agent's side of the REST API's write commands: restart and reinitialize.
//!
//! The HA core has no restart or reinitialize action yet, so these run inside the main loop,
//! between two cycles: the core never observes a half-restarted server. A leader's restart is
//! bounded by its lease deadline; past it PostgreSQL is killed (ha-safety rule 2), and the next
//! cycle decides from what it then sees. Reinitialize only wipes the data directory: the core's
//! own "empty data directory with a leader → clone" path does the rest.

use std::time::Duration;

use crate::api::Access;
use crate::config::Config;
use crate::postgres::{StartAs, StopMode};

use super::Agent;

/// The REST API's access rules from `restapi`.
pub(super) fn access_of(cfg: &Config) -> Access {
    Access {
        auth: cfg
            .restapi
            .authentication
            .as_ref()
            .map(|a| (a.username.clone(), a.password.clone())),
        allowlist: cfg.restapi.allowlist.clone(),
        include_members: cfg.restapi.allowlist_include_members,
    }
}

impl Agent {
    /// `POST /restart`: a fast stop and a start in the role PostgreSQL had.
    pub(super) async fn restart_postgres(&mut self) -> Result<(), String> {
        let now = self.mono_now();
        let holder = self.core.holds_lock(now);
        let deadline = if holder {
            self.core.lease_deadline().map(|d| self.instant_of(d))
        } else {
            None
        };
        let how = if holder {
            StartAs::Primary
        } else {
            StartAs::Replica {
                primary_conninfo: self.upstream.clone().and_then(|u| self.conninfo_of(&u)),
                slot: self
                    .dynamic
                    .use_slots
                    .then(|| crate::dcs::model::slot_name(&self.cfg.name)),
            }
        };
        let stop_timeout = self.cfg.postgresql.pg_ctl_timeout;
        let Ok(mut pg) = self.pg.clone().try_lock_owned() else {
            return Err("restart already in progress".into());
        };
        if !pg.is_running() {
            return Err("postgres is not running".into());
        }
        tracing::info!(holder, "restarting postgres on request");
        let work = async {
            pg.stop(StopMode::Fast, stop_timeout)
                .await
                .map_err(|e| e.to_string())?;
            pg.start(how).await.map_err(|e| e.to_string())
        };
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d, work).await {
                Ok(r) => r,
                Err(_) => {
                    pg.kill_now();
                    Err(
                        "restart failed: it did not finish before the leader lock would expire"
                            .into(),
                    )
                }
            },
            None => work.await,
        };
        result.map_err(|e| {
            tracing::warn!("restart failed: {e}");
            "restart failed".to_string()
        })
    }

    /// `POST /reinitialize`: stop PostgreSQL and empty the data directory.
    pub(super) async fn wipe_for_reinitialize(&mut self) -> Result<(), String> {
        if self.core.holds_lock(self.mono_now()) {
            return Err("I am the leader, can not reinitialize".into());
        }
        if self.policy().pause {
            return Err("reinitialize is not supported in the paused state yet".into());
        }
        let Ok(mut pg) = self.pg.clone().try_lock_owned() else {
            return Err("reinitialize already in progress".into());
        };
        pg.stop(StopMode::Immediate, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        let dir = &self.cfg.postgresql.data_dir;
        tracing::info!("reinitialize: removing the contents of {}", dir.display());
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let r = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
        }
        self.upstream = None;
        Ok(())
    }
}
