//! `initdb` and the users of a fresh cluster.

use super::error::{PgError, run};
use super::{DataDirState, Postgres, query, write_file};

impl Postgres {
    /// `initdb -D data_dir -U superuser` + `initdb_args` (`--pwfile` if the superuser has a
    /// password), then `pg_hba.conf` from the settings. The data directory must be empty.
    pub async fn initdb(&self) -> Result<(), PgError> {
        let s = &self.settings;
        match self.data_dir_state().await {
            DataDirState::Empty => {}
            DataDirState::Initialized(_) => {
                return Err(PgError::InvalidDataDir(format!(
                    "{} is already initialized",
                    s.data_dir.display()
                )));
            }
            DataDirState::Invalid(why) => return Err(PgError::InvalidDataDir(why)),
        }
        let mut args = vec![
            format!("--pgdata={}", s.data_dir.display()),
            format!("--username={}", s.superuser.username),
        ];
        args.extend(s.initdb_args.iter().cloned());
        let pwfile = match &s.superuser.password {
            Some(pw) => {
                let path = std::env::temp_dir().join(format!(
                    "pgwarden-initdb-pw-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                ));
                write_file(&path, &format!("{pw}\n"))?;
                args.push(format!("--pwfile={}", path.display()));
                Some(path)
            }
            None => None,
        };
        let res = run(&s.bin("initdb"), &args, &[], None, None).await;
        if let Some(p) = pwfile {
            let _ = std::fs::remove_file(p);
        }
        res?;
        self.write_hba()?;
        Ok(())
    }

    /// On a running fresh primary: set the superuser password, create (or update) the
    /// replication user (`REPLICATION LOGIN PASSWORD`) and the rewind user with the PG11+
    /// grants pg_rewind needs. Statement logging is switched off for the session.
    pub async fn post_bootstrap(&self) -> Result<(), PgError> {
        let sql = query::bootstrap_sql(&self.settings).join(";\n");
        query::with_client(
            &self.settings,
            "post-bootstrap user setup",
            self.settings.pg_ctl_timeout,
            async |c| c.batch_execute(&sql).await,
        )
        .await
    }
}
