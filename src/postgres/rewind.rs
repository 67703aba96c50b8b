//! Rejoining a diverged former primary with `pg_rewind`.

use super::conf::{self, RECOVERY_SIGNAL, STANDBY_SIGNAL};
use super::error::{PgError, run};
use super::{DataDirState, Postgres, remove_if_exists, write_file};

impl Postgres {
    /// Brings a stopped, diverged data directory back in line with the leader:
    /// 1. if `pg_control` does not say "shut down"/"shut down in recovery": single-user crash
    ///    recovery (`postgres --single ... template1 < /dev/null`, without signal files);
    /// 2. `pg_rewind --target-pgdata=<d> --source-server=<conninfo>`, where the conninfo gets
    ///    the rewind user (else the superuser), its password and `dbname=postgres` appended
    ///    (libpq: the last keyword wins);
    /// 3. writes `standby.signal`.
    pub async fn rewind(&self, leader_conninfo: &str) -> Result<(), PgError> {
        if self.is_running_shared() {
            return Err(PgError::InvalidDataDir(
                "cannot rewind while postgres is running".into(),
            ));
        }
        let s = &self.settings;
        let d = &s.data_dir;
        let cd = match self.data_dir_state().await {
            DataDirState::Initialized(cd) => cd,
            DataDirState::Empty => {
                return Err(PgError::InvalidDataDir(format!("{} is empty", d.display())));
            }
            DataDirState::Invalid(why) => return Err(PgError::InvalidDataDir(why)),
        };
        if !cd.is_clean_shutdown() {
            tracing::info!(state = %cd.cluster_state, "running single-user crash recovery before pg_rewind");
            remove_if_exists(&d.join(STANDBY_SIGNAL))?;
            remove_if_exists(&d.join(RECOVERY_SIGNAL))?;
            let args: Vec<String> = [
                "--single",
                "-D",
                &d.display().to_string(),
                "-c",
                "archive_mode=on",
                "-c",
                "archive_command=false",
                "-c",
                "search_path=",
                "template1",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            run(
                &s.bin("postgres"),
                &args,
                &[],
                Some(""),
                Some(s.pg_ctl_timeout * 5),
            )
            .await?;
        }
        let creds = s.rewind_credentials();
        let mut extra = vec![("user", creds.username.as_str()), ("dbname", "postgres")];
        if let Some(pw) = &creds.password {
            extra.push(("password", pw.as_str()));
        }
        let source = conf::conninfo_override(leader_conninfo, &extra);
        let env = self.write_pgpass(creds)?;
        let args = vec![
            format!("--target-pgdata={}", d.display()),
            format!("--source-server={source}"),
        ];
        run(&s.bin("pg_rewind"), &args, &env, None, None).await?;
        write_file(&d.join(STANDBY_SIGNAL), "")?;
        tracing::info!("pg_rewind finished");
        Ok(())
    }

    fn is_running_shared(&self) -> bool {
        self.postmaster.as_ref().is_some_and(super::pm_alive_shared)
            || self.foreign_postmaster().is_some()
    }
}
