//! Queries against our own server over a short-lived superuser connection.

use std::time::Duration;

use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, NoTls};

use super::conf::{local_tcp_host, quote_ident, quote_literal};
use super::error::PgError;
use super::settings::{PgSettings, PgStatus, ReplicationRow};

/// Bound for one status round, connect included.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How we connect to ourselves: socket dir if configured, else TCP to the listen address.
pub fn local_config(s: &PgSettings) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    match &s.socket_dir {
        Some(dir) => {
            c.host_path(dir);
        }
        None => {
            c.host(local_tcp_host(&s.listen_host));
        }
    }
    c.port(s.port)
        .user(&s.superuser.username)
        .dbname("postgres")
        .application_name("pgwarden")
        .connect_timeout(Duration::from_secs(2));
    if let Some(pw) = &s.superuser.password {
        c.password(pw);
    }
    c
}

/// Connects to ourselves; the connection task is spawned on the current runtime.
pub async fn connect(s: &PgSettings) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = local_config(s).connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("local connection closed: {e}");
        }
    });
    Ok(client)
}

/// Result of one readiness probe.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// Accepting connections (an authentication failure also proves that).
    Accepting,
    /// The server answered but refuses connections for now (starting up, in recovery).
    Rejecting,
    /// No answer (not listening yet).
    NoResponse,
}

pub async fn probe(s: &PgSettings) -> Probe {
    let config = local_config(s);
    match tokio::time::timeout(Duration::from_secs(3), config.connect(NoTls)).await {
        Err(_) => Probe::NoResponse,
        Ok(Ok((_client, _conn))) => Probe::Accepting,
        Ok(Err(e)) => match e.as_db_error() {
            // 57P03 cannot_connect_now: "the database system is starting up"
            Some(db) if db.code().code() == "57P03" => Probe::Rejecting,
            Some(_) => Probe::Accepting,
            None => Probe::NoResponse,
        },
    }
}

/// Runs `f` against a fresh connection within `timeout` (connect included).
pub async fn with_client<T, F>(
    s: &PgSettings,
    what: &str,
    timeout: Duration,
    f: F,
) -> Result<T, PgError>
where
    F: AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
{
    let fut = async {
        let client = connect(s)
            .await
            .map_err(|e| PgError::query(format!("connect for {what}"), &e))?;
        f(&client).await.map_err(|e| PgError::query(what, &e))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| PgError::Timeout {
            what: what.to_string(),
            after: timeout,
        })?
}

const TS_FMT: &str = "'YYYY-MM-DD HH24:MI:SS.US'";

fn lsn(v: Option<PgLsn>) -> Option<u64> {
    v.map(u64::from)
}

/// One status round.
pub async fn status(s: &PgSettings) -> Result<PgStatus, PgError> {
    with_client(s, "status query", STATUS_TIMEOUT, async |c: &Client| {
        let common = format!(
            "SELECT pg_catalog.pg_is_in_recovery(), \
                    pg_catalog.current_setting('server_version_num')::int, \
                    pg_catalog.to_char(pg_catalog.pg_postmaster_start_time(), {TS_FMT}) \
                      || pg_catalog.to_char(pg_catalog.pg_postmaster_start_time(), 'TZH:TZM'), \
                    (SELECT pg_catalog.bool_or(pending_restart) FROM pg_catalog.pg_settings), \
                    (SELECT system_identifier::text FROM pg_catalog.pg_control_system())"
        );
        let row = c.query_one(common.as_str(), &[]).await?;
        let mut st = PgStatus {
            in_recovery: row.get(0),
            server_version: row.get::<_, i32>(1) as u32,
            postmaster_start_time: row.get(2),
            pending_restart: row.get::<_, Option<bool>>(3).unwrap_or(false),
            sysid: row.get(4),
            ..PgStatus::default()
        };
        if !st.in_recovery {
            let row = c
                .query_one(
                    "SELECT pg_catalog.pg_current_wal_flush_lsn(), \
                            ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int::bigint, \
                            pg_catalog.current_setting('synchronous_standby_names')",
                    &[],
                )
                .await?;
            st.wal_position = row.get::<_, PgLsn>(0).into();
            st.timeline = row.get::<_, i64>(1) as u64;
            st.synchronous_standby_names = Some(row.get(2));
        } else {
            let q = format!(
                "SELECT pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn(), \
                        pg_catalog.to_char(pg_catalog.pg_last_xact_replay_timestamp(), {TS_FMT}) \
                          || pg_catalog.to_char(pg_catalog.pg_last_xact_replay_timestamp(), 'TZH:TZM'), \
                        pg_catalog.pg_is_wal_replay_paused(), \
                        (SELECT status FROM pg_catalog.pg_stat_get_wal_receiver()), \
                        (SELECT received_tli::bigint FROM pg_catalog.pg_stat_get_wal_receiver()), \
                        (SELECT timeline_id::bigint FROM pg_catalog.pg_control_checkpoint()), \
                        pg_catalog.current_setting('restore_command')"
            );
            let row = c.query_one(q.as_str(), &[]).await?;
            st.receive_lsn = lsn(row.get(0));
            st.replay_lsn = lsn(row.get(1));
            st.replayed_timestamp = row.get(2);
            st.replay_paused = row.get(3);
            let wr_status: Option<String> = row.get(4);
            st.received_timeline = row.get::<_, Option<i64>>(5).filter(|t| *t > 0).map(|t| t as u64);
            let checkpoint_tl: Option<i64> = row.get(6);
            let restore_command: String = row.get(7);
            st.wal_position = st.receive_lsn.unwrap_or(0).max(st.replay_lsn.unwrap_or(0));
            st.timeline = st.received_timeline.or(checkpoint_tl.map(|t| t as u64)).unwrap_or(0);
            st.replication_state = if wr_status.as_deref() == Some("streaming") {
                Some("streaming".into())
            } else if !restore_command.is_empty() {
                Some("in archive recovery".into())
            } else {
                None
            };
        }
        let rows = c
            .query(
                "SELECT COALESCE(usename::text, ''), COALESCE(application_name, ''), host(client_addr), \
                        COALESCE(state, ''), COALESCE(sync_state, ''), COALESCE(sync_priority, 0), \
                        CASE pg_catalog.current_setting('synchronous_commit') \
                          WHEN 'remote_apply' THEN replay_lsn WHEN 'remote_write' THEN write_lsn \
                          ELSE flush_lsn END \
                 FROM pg_catalog.pg_stat_replication ORDER BY application_name",
                &[],
            )
            .await?;
        st.replication = rows
            .iter()
            .map(|r| ReplicationRow {
                usename: r.get(0),
                application_name: r.get(1),
                client_addr: r.get(2),
                state: r.get(3),
                sync_state: r.get(4),
                sync_priority: r.get(5),
                ack_lsn: lsn(r.get(6)),
            })
            .collect();
        Ok(st)
    })
    .await
}

/// Runs a statement (or several, simple protocol) with a bound.
pub async fn one_shot(s: &PgSettings, sql: &str, timeout: Duration) -> Result<(), PgError> {
    let what = format!("query {:?}", sql.chars().take(80).collect::<String>());
    with_client(s, &what, timeout, async |c: &Client| {
        c.batch_execute(sql).await
    })
    .await
}

/// On a primary whose `synchronous_standby_names` was just reloaded as `value`: once the server
/// runs with it, one small commit that itself waits for no standby. A walsender applies a new
/// list only when its standby next reports a flush, and a standby reports when WAL reaches it:
/// without new WAL, commits that a newly listed standby already holds would wait for whatever
/// WAL comes next (seconds, in a quiet moment of a rolling restart). Not a primary: nothing.
pub async fn nudge_sync_standbys(
    s: &PgSettings,
    value: &str,
    timeout: Duration,
) -> Result<(), PgError> {
    with_client(
        s,
        "a commit after changing the synchronous standbys",
        timeout,
        async |c: &Client| {
            // A backend reads a reloaded file between commands: ask until it runs with the new
            // value (walsenders reload as promptly), a little while at most.
            for _ in 0..20 {
                let row = c
                    .query_one(
                        "SELECT pg_catalog.current_setting('synchronous_standby_names'), \
                            pg_catalog.pg_is_in_recovery()",
                        &[],
                    )
                    .await?;
                if row.get::<_, bool>(1) {
                    return Ok(());
                }
                if row.get::<_, String>(0) == value {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c.batch_execute(
                "BEGIN; SET LOCAL synchronous_commit TO local; \
             SELECT pg_catalog.txid_current(); COMMIT",
            )
            .await
        },
    )
    .await
}

/// The SQL `post_bootstrap` runs: superuser password, replication user, rewind user + grants.
pub fn bootstrap_sql(s: &PgSettings) -> Vec<String> {
    let mut sql = vec![
        "SET log_statement TO none".to_string(),
        "SET log_min_duration_statement TO -1".to_string(),
        "SET log_min_error_statement TO panic".to_string(),
        // In synchronous_mode_strict the fresh primary starts with commits waiting for a
        // standby that cannot exist before the primary is set up: the roles are created
        // without waiting (no client has been told anything yet).
        "SET synchronous_commit TO local".to_string(),
    ];
    let su = &s.superuser;
    if let Some(pw) = &su.password {
        sql.push(format!(
            "ALTER ROLE {} WITH PASSWORD {}",
            quote_ident(&su.username),
            quote_literal(pw)
        ));
    }
    let mut ensure_role = |name: &str, pw: &Option<String>, opts: &str| {
        let pw = pw
            .as_ref()
            .map(|p| format!(" PASSWORD {}", quote_literal(p)))
            .unwrap_or_default();
        // CREATE ROLE has no IF NOT EXISTS: decide in a DO block, quoting via format()
        let body = format!(
            "IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {lit}) THEN \
               EXECUTE {alter}; ELSE EXECUTE {create}; END IF;",
            lit = quote_literal(name),
            alter = quote_literal(&format!("ALTER ROLE {} WITH {opts}{pw}", quote_ident(name))),
            create = quote_literal(&format!(
                "CREATE ROLE {} WITH {opts}{pw}",
                quote_ident(name)
            )),
        );
        sql.push(format!("DO $pgwarden$ BEGIN {body} END $pgwarden$"));
    };
    if s.replication.username != su.username {
        ensure_role(
            &s.replication.username,
            &s.replication.password,
            "REPLICATION LOGIN",
        );
    }
    if let Some(rw) = &s.rewind
        && rw.username != su.username
    {
        ensure_role(&rw.username, &rw.password, "LOGIN");
        for f in [
            "pg_catalog.pg_ls_dir(text, boolean, boolean)",
            "pg_catalog.pg_stat_file(text, boolean)",
            "pg_catalog.pg_read_binary_file(text)",
            "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
        ] {
            sql.push(format!(
                "GRANT EXECUTE ON FUNCTION {f} TO {}",
                quote_ident(&rw.username)
            ));
        }
    }
    sql
}

/// Creates missing physical slots and drops inactive physical slots not in `names`.
pub async fn ensure_slots(
    s: &PgSettings,
    names: &[String],
    timeout: Duration,
) -> Result<(), PgError> {
    with_client(s, "ensure replication slots", timeout, async |c: &Client| {
        let rows = c
            .query(
                "SELECT slot_name::text, active FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical'",
                &[],
            )
            .await?;
        let existing: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (name, active) in &existing {
            if !active && !names.contains(name) {
                tracing::info!(slot = %name, "dropping physical replication slot");
                c.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[name]).await?;
            }
        }
        for name in names {
            if !existing.iter().any(|(n, _)| n == name) {
                tracing::info!(slot = %name, "creating physical replication slot");
                c.execute("SELECT pg_catalog.pg_create_physical_replication_slot($1, true)", &[name]).await?;
            }
        }
        Ok(())
    })
    .await
}

/// `SELECT pg_promote(true, wait_seconds)`.
pub async fn promote(s: &PgSettings, wait_seconds: i32) -> Result<bool, PgError> {
    let timeout = Duration::from_secs(wait_seconds as u64 + 5);
    with_client(s, "pg_promote", timeout, async |c: &Client| {
        let row = c
            .query_one("SELECT pg_catalog.pg_promote(true, $1)", &[&wait_seconds])
            .await?;
        Ok(row.get::<_, bool>(0))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::settings::Credentials;
    use std::path::PathBuf;

    #[test]
    fn bootstrap_sql_quotes_and_grants() {
        let s = PgSettings {
            data_dir: PathBuf::new(),
            bin_dir: PathBuf::new(),
            listen_host: "*".into(),
            port: 5432,
            connect_host: "h".into(),
            socket_dir: None,
            name: "n".into(),
            scope: "s".into(),
            parameters: Default::default(),
            pg_hba: vec![],
            superuser: Credentials {
                username: "postgres".into(),
                password: Some("a'b".into()),
            },
            replication: Credentials {
                username: "rep\"l".into(),
                password: Some("x".into()),
            },
            rewind: Some(Credentials {
                username: "rw".into(),
                password: None,
            }),
            pgpass: PathBuf::new(),
            initdb_args: vec![],
            basebackup_args: vec![],
            pg_ctl_timeout: Duration::from_secs(1),
        };
        let sql = bootstrap_sql(&s);
        assert_eq!(sql[3], "SET synchronous_commit TO local");
        assert_eq!(sql[4], "ALTER ROLE \"postgres\" WITH PASSWORD 'a''b'");
        assert!(sql[5].contains("rolname = 'rep\"l'"), "{}", sql[5]);
        assert!(
            sql[5].contains("'CREATE ROLE \"rep\"\"l\" WITH REPLICATION LOGIN PASSWORD ''x'''"),
            "{}",
            sql[5]
        );
        assert!(
            sql[6].contains("CREATE ROLE \"rw\" WITH LOGIN'"),
            "{}",
            sql[6]
        );
        assert_eq!(sql.len(), 11);
        assert_eq!(
            sql[10],
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO \"rw\""
        );
    }
}
