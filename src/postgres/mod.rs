//! The supervised PostgreSQL server: process, control commands, config files, queries.
//!
//! One [`Postgres`] owns one data directory and (at most) one postmaster, which runs as our
//! child process (never daemonised), so it dies with us: see [`process`].
//!
//! Files, one concern each:
//! - `settings.rs`: [`PgSettings`], [`StartAs`], [`StopMode`], [`PgStatus`].
//! - `conf.rs`: pure rendering of `postgresql.conf`, `pg_hba.conf`, pgpass, conninfo strings.
//! - `controldata.rs`: `pg_controldata` parsing, [`DataDirState`].
//! - `lsn.rs`: LSN text, [`parse_lsn`] and [`format_lsn`].
//! - `process.rs`: spawning and signalling the postmaster child.
//! - `query.rs`: status and other bounded queries.
//! - `timeline.rs`: timeline history files, [`TimelineSwitch`].
//! - `sync_names.rs`: `synchronous_standby_names` spelled as Patroni writes it.
//! - `bootstrap.rs`: `initdb`, users. `clone.rs`: `pg_basebackup`. `rewind.rs`: `pg_rewind`.

mod bootstrap;
mod clone;
pub mod conf;
mod controldata;
mod error;
mod lsn;
mod process;
mod query;
mod rewind;
mod settings;
pub mod sync_names;
mod timeline;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use controldata::{Controldata, DataDirState, parse_controldata};
pub use error::PgError;
pub use lsn::{format_lsn, parse_lsn};
pub use process::{
    kill_data_dir_processes, kill_data_dir_processes_confirmed, postgres_processes_in,
    postmaster_pid_file_alive,
};
pub use settings::{Credentials, PgSettings, PgStatus, ReplicationRow, StartAs, StopMode};
pub use timeline::{TimelineSwitch, parse_timeline_history};

use conf::{BASE_CONF, CONF, HBA, RecoveryConf, STANDBY_SIGNAL};
use process::Postmaster;

/// One supervised PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    settings: PgSettings,
    postmaster: Option<Postmaster>,
    /// What our config file currently says: `None` primary, `Some` replica.
    recovery: Option<RecoveryConf>,
    /// `synchronous_standby_names` set by the HA core, over the settings' own.
    sync_names: Option<String>,
}

impl Postgres {
    pub fn new(settings: PgSettings) -> Self {
        let recovery = settings
            .data_dir
            .join(STANDBY_SIGNAL)
            .exists()
            .then(RecoveryConf::default);
        Postgres {
            settings,
            postmaster: None,
            recovery,
            sync_names: None,
        }
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// New settings take effect at the next start, reload, follow or promote (those render
    /// the config files).
    pub fn update_settings(&mut self, s: PgSettings) {
        self.settings = s;
    }

    /// Empty/missing → `Empty`; `pg_controldata` works → `Initialized`; else `Invalid`.
    pub async fn data_dir_state(&self) -> DataDirState {
        controldata::data_dir_state(&self.settings.bin_dir, &self.settings.data_dir).await
    }

    /// Our child is alive, or a postmaster we did not start runs on our data directory
    /// (see [`Postgres::foreign_postmaster`]).
    pub fn is_running(&mut self) -> bool {
        self.child_alive() || self.foreign_postmaster().is_some()
    }

    /// Pid of a live postmaster on our data directory (per `postmaster.pid`) that is not our
    /// child, e.g. left over from an earlier agent or started by hand. We do not adopt it, but
    /// `stop`/`kill_now`/`reload`/queries work on it.
    pub fn foreign_postmaster(&self) -> Option<i32> {
        let pid = process::postmaster_pid_file_alive(&self.settings.data_dir)?;
        match &self.postmaster {
            Some(pm) if pm.pid() as i32 == pid => None,
            _ => Some(pid),
        }
    }

    /// Pid of our postmaster child while it is alive.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster
            .as_ref()
            .filter(|pm| pm_alive_shared(pm))
            .map(|pm| pm.pid())
    }

    fn child_alive(&mut self) -> bool {
        match &mut self.postmaster {
            Some(pm) => pm.is_alive(),
            None => false,
        }
    }

    /// Renders the config, writes or removes `standby.signal`, spawns the postmaster as our
    /// child and waits until it accepts connections. A replica only has to answer (it may
    /// refuse connections until consistent); if it does not within `pg_ctl_timeout` it is left
    /// running and `Ok` is returned. A primary not accepting connections by then is left
    /// running and `Err(StartTimeout)` is returned. `Err(Exited)` if the child exited.
    pub async fn start(&mut self, how: StartAs) -> Result<(), PgError> {
        if self.child_alive() {
            return Err(PgError::AlreadyRunning {
                pid: self.postmaster.as_ref().map_or(0, |p| p.pid()),
            });
        }
        if let Some(pid) = self.foreign_postmaster() {
            return Err(PgError::ForeignPostmaster { pid });
        }
        let d = &self.settings.data_dir;
        if !d.join("PG_VERSION").is_file() {
            return Err(PgError::InvalidDataDir(format!(
                "{} has no PG_VERSION",
                d.display()
            )));
        }
        let recovery = match how {
            StartAs::Primary => None,
            StartAs::Replica {
                primary_conninfo,
                slot,
            } => Some(RecoveryConf {
                primary_conninfo,
                slot,
            }),
        };
        self.write_config(recovery.as_ref())?;
        self.recovery = recovery;
        ensure_mode_0700(d)?;
        let mut args = vec!["-D".to_string(), d.display().to_string()];
        args.push(format!("--config-file={}", d.join(CONF).display()));
        args.extend(conf::postmaster_args(&self.settings));
        let pm = Postmaster::spawn(&self.settings.bin("postgres"), &args)?;
        let pid = pm.pid();
        self.postmaster = Some(pm);
        let replica = self.recovery.is_some();
        let timeout = self.settings.pg_ctl_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(err) = self.exited_error().await {
                return Err(err);
            }
            match query::probe(&self.settings).await {
                query::Probe::Accepting => break,
                query::Probe::Rejecting if replica => break,
                _ => {}
            }
            if Instant::now() >= deadline {
                if let Some(err) = self.exited_error().await {
                    return Err(err);
                }
                if replica {
                    tracing::warn!(
                        pid,
                        "replica still not answering after {timeout:?}; leaving it running"
                    );
                    break;
                }
                return Err(PgError::StartTimeout {
                    pid,
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(pid, replica, "postgres started");
        Ok(())
    }

    /// `Some(Exited)` if our child has exited (after letting its output drain).
    async fn exited_error(&mut self) -> Option<PgError> {
        let pm = self.postmaster.as_mut()?;
        let status = pm.try_exit()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stderr_tail = pm.output_tail();
        self.postmaster = None;
        Some(PgError::Exited {
            status: status.to_string(),
            stderr_tail,
        })
    }

    /// Signals the postmaster and waits for it to exit. After `timeout` the postmaster, its
    /// process group and its children get SIGKILL (and `Ok` is returned: it is stopped; the
    /// escalation is logged). Not running: `Ok`. Works on a foreign postmaster too.
    pub async fn stop(&mut self, mode: StopMode, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        if self.child_alive()
            && let Some(pm) = self.postmaster.as_mut()
        {
            let pid = pm.pid();
            tracing::info!(pid, ?mode, "stopping postgres");
            let _ = pm.signal(mode.signal());
            while pm.is_alive() {
                if Instant::now() >= deadline {
                    tracing::warn!(
                        pid,
                        ?mode,
                        "postgres did not stop within {timeout:?}; killing it"
                    );
                    pm.kill_hard();
                    break;
                }
                // Polled often: in a switchover, writes wait for this stop to be noticed
                // (the lock is released after it), and a poll is one waitpid.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.postmaster = None;
            return Ok(());
        }
        self.postmaster = None;
        if let Some(pid) = self.foreign_postmaster() {
            tracing::info!(pid, ?mode, "stopping a postmaster we did not start");
            process::signal_pid(pid, mode.signal())?;
            while self.foreign_postmaster() == Some(pid) {
                if Instant::now() >= deadline {
                    tracing::warn!(
                        pid,
                        "foreign postmaster did not stop within {timeout:?}; killing it"
                    );
                    kill_foreign(pid);
                    let until = Instant::now() + Duration::from_secs(5);
                    while process::pid_alive(pid) && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Synchronous "stop writes NOW": SIGQUIT, up to 100 ms grace, then SIGKILL to the
    /// postmaster, its group and its children. Never awaits; blocks at most ~100 ms.
    pub fn kill_now(&mut self) {
        if let Some(mut pm) = self.postmaster.take()
            && pm.is_alive()
        {
            tracing::warn!(pid = pm.pid(), "killing postgres now");
            let _ = pm.signal(libc::SIGQUIT);
            let until = Instant::now() + Duration::from_millis(100);
            while pm.is_alive() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            pm.kill_hard();
        }
        if let Some(pid) = self.foreign_postmaster() {
            let _ = process::signal_pid(pid, libc::SIGQUIT);
            kill_foreign(pid);
        }
    }

    /// `SELECT pg_promote(true, 60)`; then our config no longer has the replica settings
    /// (PostgreSQL itself removes `standby.signal`). Already a primary: only the config is
    /// cleaned.
    pub async fn promote(&mut self) -> Result<(), PgError> {
        if !self.is_running() {
            return Err(PgError::NotRunning);
        }
        // A server still in crash recovery refuses connections ("the database system is
        // starting up") until it reaches a consistent state: wait for it rather than fail the
        // promotion (and give the lock up, and start again) over and over.
        let until = Instant::now() + self.settings.pg_ctl_timeout;
        let in_recovery = loop {
            match query::status(&self.settings).await {
                Ok(s) => break Some(s.in_recovery),
                Err(_) if Instant::now() < until && self.is_running() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => break None,
            }
        };
        if in_recovery.unwrap_or(true) {
            match query::promote(&self.settings, 60).await? {
                true => {}
                false => {
                    return Err(PgError::Promote(
                        "pg_promote did not finish within 60 s".into(),
                    ));
                }
            }
        }
        self.write_config(None)?;
        self.recovery = None;
        self.reload().await?;
        tracing::info!("postgres promoted");
        Ok(())
    }

    /// Points a replica at a (new) upstream. Running replica: rewrite
    /// `primary_conninfo`/`primary_slot_name` and reload (PG13+), `Ok(false)`. Running primary:
    /// write the replica config and restart (fast stop, start as replica), `Ok(true)`. Not
    /// running: only write the config, `Ok(false)`.
    pub async fn follow(
        &mut self,
        primary_conninfo: Option<String>,
        slot: Option<String>,
    ) -> Result<bool, PgError> {
        let rec = RecoveryConf {
            primary_conninfo,
            slot,
        };
        if self.child_alive() {
            if self.recovery.is_some() {
                self.write_config(Some(&rec))?;
                self.recovery = Some(rec);
                self.reload().await?;
                return Ok(false);
            }
            let timeout = self.settings.pg_ctl_timeout;
            self.stop(StopMode::Fast, timeout).await?;
            self.start(StartAs::Replica {
                primary_conninfo: rec.primary_conninfo,
                slot: rec.slot,
            })
            .await?;
            return Ok(true);
        }
        if let Some(pid) = self.foreign_postmaster() {
            return Err(PgError::ForeignPostmaster { pid });
        }
        self.write_config(Some(&rec))?;
        self.recovery = Some(rec);
        Ok(false)
    }

    /// Sets `synchronous_standby_names` (`None`: the settings' own again); a running server
    /// reloads, a stopped one starts with it.
    pub async fn set_sync_standby_names(&mut self, value: Option<String>) -> Result<(), PgError> {
        self.sync_names = value;
        if !(self.child_alive() || self.foreign_postmaster().is_some()) {
            return Ok(());
        }
        self.reload().await?;
        // Best effort, and short: the value is set whatever comes of it.
        if let Some(value) = self.sync_names.as_deref().filter(|v| !v.is_empty())
            && let Err(e) =
                query::nudge_sync_standbys(&self.settings, value, Duration::from_millis(500)).await
        {
            tracing::debug!("no commit after changing synchronous_standby_names: {e}");
        }
        Ok(())
    }

    /// Renders the config files from the current settings and sends SIGHUP.
    pub async fn reload(&self) -> Result<(), PgError> {
        let pid = match (&self.postmaster, self.foreign_postmaster()) {
            (Some(pm), _) if pm_alive_shared(pm) => pm.pid() as i32,
            (_, Some(pid)) => pid,
            _ => return Err(PgError::NotRunning),
        };
        self.write_config(self.recovery.as_ref())?;
        process::signal_pid(pid, libc::SIGHUP)
    }

    /// One status query round, bounded by 2 s (connect included).
    pub async fn status(&self) -> Result<PgStatus, PgError> {
        query::status(&self.settings).await
    }

    /// Runs `sql` (simple protocol, may hold several statements), bounded by `pg_ctl_timeout`.
    pub async fn query_one_shot(&self, sql: &str) -> Result<(), PgError> {
        query::one_shot(&self.settings, sql, self.settings.pg_ctl_timeout).await
    }

    /// On a primary: create missing physical slots, drop inactive physical slots not listed.
    pub async fn ensure_replication_slots(&self, names: &[String]) -> Result<(), PgError> {
        query::ensure_slots(&self.settings, names, self.settings.pg_ctl_timeout).await
    }

    /// libpq key=value conninfo with quoting.
    pub fn conninfo_for(
        &self,
        host: &str,
        port: u16,
        creds: &Credentials,
        application_name: &str,
    ) -> String {
        conf::conninfo_for(host, port, creds, application_name)
    }

    /// Writes `postgresql.conf` (moving initdb's original to `postgresql.base.conf` once),
    /// `pg_hba.conf` (if configured) and `standby.signal` (replica) or removes it (primary).
    fn write_config(&self, recovery: Option<&RecoveryConf>) -> Result<(), PgError> {
        let d = &self.settings.data_dir;
        let base = d.join(BASE_CONF);
        let conf_path = d.join(CONF);
        if !base.exists() {
            if conf_path.exists() {
                std::fs::rename(&conf_path, &base).map_err(|e| {
                    PgError::io(
                        format!("renaming {} to {BASE_CONF}", conf_path.display()),
                        e,
                    )
                })?;
            } else {
                write_file(&base, "")?;
            }
        }
        let settings = match &self.sync_names {
            Some(names) => {
                let mut s = self.settings.clone();
                s.parameters
                    .insert("synchronous_standby_names".into(), names.clone());
                std::borrow::Cow::Owned(s)
            }
            None => std::borrow::Cow::Borrowed(&self.settings),
        };
        write_file(
            &conf_path,
            &conf::render_postgresql_conf(&settings, recovery),
        )?;
        self.write_hba()?;
        let signal = d.join(STANDBY_SIGNAL);
        if recovery.is_some() {
            write_file(&signal, "")?;
        } else {
            remove_if_exists(&signal)?;
        }
        Ok(())
    }

    fn write_hba(&self) -> Result<(), PgError> {
        if self.settings.pg_hba.is_empty() {
            return Ok(());
        }
        let path = match self.settings.parameters.get("hba_file") {
            Some(p) => PathBuf::from(p),
            None => self.settings.data_dir.join(HBA),
        };
        write_file(&path, &conf::render_pg_hba(&self.settings.pg_hba))
    }

    /// Writes the pgpass file (mode 0600) for `creds`; returns the env for libpq tools.
    fn write_pgpass(&self, creds: &Credentials) -> Result<Vec<(&'static str, String)>, PgError> {
        let path = &self.settings.pgpass;
        write_file(path, &conf::render_pgpass(&[creds]))?;
        Ok(vec![
            ("PGPASSFILE", path.display().to_string()),
            ("PGUSER", creds.username.clone()),
        ])
    }
}

/// Liveness without reaping (for `&self` methods): the pid exists and is not a zombie.
fn pm_alive_shared(pm: &Postmaster) -> bool {
    let pid = pm.pid();
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn kill_foreign(pid: i32) {
    let children = process::children_of(pid);
    let _ = process::signal_pid(pid, libc::SIGKILL);
    for c in children {
        let _ = process::signal_pid(c, libc::SIGKILL);
    }
}

/// Writes a file atomically (temp + rename), mode 0600.
fn write_file(path: &Path, content: &str) -> Result<(), PgError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_file_name(format!(
        ".{}.pgwarden-tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        PgError::io(format!("writing {}", path.display()), e)
    })
}

fn remove_if_exists(path: &Path) -> Result<(), PgError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(PgError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// PostgreSQL wants 0700 (or 0750); anything else becomes 0700.
fn ensure_mode_0700(dir: &Path) -> Result<(), PgError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(dir).map_err(|e| PgError::io(format!("stat {}", dir.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode != 0o700 && mode != 0o750 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PgError::io(format!("chmod 0700 {}", dir.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    fn futures_are_send(pg: &mut Postgres) {
        assert_send(&pg.status());
        assert_send(&pg.query_one_shot("x"));
        assert_send(&pg.ensure_replication_slots(&[]));
        assert_send(&pg.basebackup("x"));
        assert_send(&pg.rewind("x"));
        assert_send(&pg.initdb());
        assert_send(&pg.post_bootstrap());
        assert_send(&pg.reload());
        assert_send(&pg.start(StartAs::Primary));
        assert_send(&pg.stop(StopMode::Fast, Duration::from_secs(1)));
        assert_send(&pg.promote());
        assert_send(&pg.follow(None, None));
    }
}
