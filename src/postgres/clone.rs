//! Creating a replica with `pg_basebackup`; moving a data directory aside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{PgError, run};
use super::{DataDirState, Postgres, ensure_mode_0700};

const ATTEMPTS: u32 = 2;
const RETRY_PAUSE: Duration = Duration::from_secs(5);

impl Postgres {
    /// `pg_basebackup --pgdata=<d> -X stream --dbname=<conninfo>` + `basebackup_args`, as the
    /// replication user (`PGUSER`, password via the pgpass file; an explicit user/password in
    /// the conninfo wins). Two attempts 5 s apart; the half-written directory is emptied after
    /// a failed attempt. The data directory must be missing or empty; it ends up mode 0700.
    pub async fn basebackup(&self, leader_conninfo: &str) -> Result<(), PgError> {
        let s = &self.settings;
        let d = &s.data_dir;
        match self.data_dir_state().await {
            DataDirState::Empty => {}
            _ => {
                return Err(PgError::InvalidDataDir(format!(
                    "{} is not empty",
                    d.display()
                )));
            }
        }
        create_dir_0700(d)?;
        let env = self.write_pgpass(&s.replication)?;
        let mut args = vec![
            format!("--pgdata={}", d.display()),
            "-X".to_string(),
            "stream".to_string(),
            format!("--dbname={leader_conninfo}"),
        ];
        args.extend(s.basebackup_args.iter().cloned());
        let mut attempt = 1;
        loop {
            let res = run(&s.bin("pg_basebackup"), &args, &env, None, None).await;
            match res {
                Ok(_) => {
                    ensure_mode_0700(d)?;
                    tracing::info!(data_dir = %d.display(), "pg_basebackup finished");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(attempt, "pg_basebackup failed: {e}");
                    empty_dir(d)?;
                    if attempt >= ATTEMPTS {
                        return Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Deletes the contents of the data directory, keeping the directory (`POST
    /// /reinitialize`: Patroni wipes it too). Refuses while a postmaster runs on it.
    pub fn wipe_data_dir(&self) -> Result<(), PgError> {
        if let Some(pm) = &self.postmaster
            && super::pm_alive_shared(pm)
        {
            return Err(PgError::AlreadyRunning { pid: pm.pid() });
        }
        if let Some(pid) = self.foreign_postmaster() {
            return Err(PgError::ForeignPostmaster { pid });
        }
        tracing::info!(
            "removing the contents of {}",
            self.settings.data_dir.display()
        );
        empty_dir(&self.settings.data_dir)
    }

    /// Moves the data directory aside to `<data_dir>.failed.<UTC timestamp>` (nothing is
    /// deleted; old copies are for the operator to remove). If it cannot be renamed (e.g. a
    /// mount point) its contents are deleted instead. Refuses while a postmaster runs on it.
    pub fn remove_data_dir(&self) -> Result<(), PgError> {
        let d = &self.settings.data_dir;
        if let Some(pm) = &self.postmaster
            && super::pm_alive_shared(pm)
        {
            return Err(PgError::AlreadyRunning { pid: pm.pid() });
        }
        if let Some(pid) = self.foreign_postmaster() {
            return Err(PgError::ForeignPostmaster { pid });
        }
        if !d.exists() {
            return Ok(());
        }
        let target = aside_name(
            d,
            &chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string(),
        );
        match std::fs::rename(d, &target) {
            Ok(()) => {
                tracing::warn!(from = %d.display(), to = %target.display(), "moved the data directory aside");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    "cannot move {} aside ({e}); deleting its contents",
                    d.display()
                );
                empty_dir(d)
            }
        }
    }
}

fn aside_name(d: &Path, ts: &str) -> PathBuf {
    let mut name = d.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".failed.{ts}"));
    d.with_file_name(name)
}

fn create_dir_0700(d: &Path) -> Result<(), PgError> {
    use std::os::unix::fs::DirBuilderExt;
    if !d.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(|e| PgError::io(format!("creating {}", d.display()), e))?;
    }
    ensure_mode_0700(d)
}

/// Deletes everything inside `d` (keeps `d`).
pub(super) fn empty_dir(d: &Path) -> Result<(), PgError> {
    let entries = match std::fs::read_dir(d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PgError::io(format!("reading {}", d.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| PgError::io(format!("reading {}", d.display()), e))?;
        let p = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|e| PgError::io(format!("removing {}", p.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_name_is_a_sibling() {
        assert_eq!(
            aside_name(Path::new("/var/lib/pg/data"), "20260101T000000.000Z"),
            PathBuf::from("/var/lib/pg/data.failed.20260101T000000.000Z")
        );
    }
}
