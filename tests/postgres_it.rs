//! The `postgres` module against a real PostgreSQL 15 (run as user `postgres` when root).

#[path = "support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use pgwarden::postgres::{
    Credentials, DataDirState, PgError, PgStatus, Postgres, StartAs, StopMode,
};

/// Skip/fail on missing PostgreSQL; when root, re-run as postgres. True: the caller returns.
fn prelude(test_name: &str) -> bool {
    pg::init_tracing();
    if !pg::pg_available() {
        return true;
    }
    pg::run_as_postgres_if_root(test_name)
}

async fn wait_streaming(p: &Postgres, timeline: u64) -> PgStatus {
    pg::wait_for("replica streaming", Duration::from_secs(90), || async {
        let st = p.status().await.ok()?;
        (st.in_recovery
            && st.replication_state.as_deref() == Some("streaming")
            && st.received_timeline == Some(timeline))
        .then_some(st)
    })
    .await
}

async fn wait_walsender(p: &Postgres, app: &str) {
    pg::wait_for(
        &format!("walsender for {app}"),
        Duration::from_secs(90),
        || async {
            let st = p.status().await.ok()?;
            st.replication
                .iter()
                .any(|r| r.application_name == app && r.state == "streaming")
                .then_some(())
        },
    )
    .await
}

fn without_password(c: &Credentials) -> Credentials {
    Credentials {
        username: c.username.clone(),
        password: None,
    }
}

/// Tests 1 + 2: initdb, primary, users, slots, basebackup, streaming replica, follow via
/// reload, promote, rewind of the old primary, streaming on timeline 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_promote_rewind_follow() {
    if prelude("replication_promote_rewind_follow") {
        return;
    }
    let dir = pg::TestDir::new("repl");
    let sa = pg::settings(&dir.path, "a", pg::free_port());
    let sb = pg::settings(&dir.path, "b", pg::free_port());
    let mut a = Postgres::new(sa.clone());
    let mut b = Postgres::new(sb.clone());

    // --- primary A
    assert_eq!(a.data_dir_state().await, DataDirState::Empty);
    a.initdb().await.unwrap();
    match a.data_dir_state().await {
        DataDirState::Initialized(c) => {
            assert_eq!(c.cluster_state, "shut down");
            assert_eq!(c.timeline, 1);
            assert!(!c.sysid.is_empty());
        }
        other => panic!("after initdb: {other:?}"),
    }
    assert!(
        a.initdb().await.is_err(),
        "initdb on an initialized dir must fail"
    );
    assert!(!a.is_running());
    a.start(StartAs::Primary).await.unwrap();
    assert!(a.is_running());
    assert!(a.pid().is_some());
    assert_eq!(a.foreign_postmaster(), None);
    assert!(matches!(
        a.start(StartAs::Primary).await,
        Err(PgError::AlreadyRunning { .. })
    ));
    // our config layout
    let conf = std::fs::read_to_string(sa.data_dir.join("postgresql.conf")).unwrap();
    assert!(conf.starts_with("# Do not edit"), "{conf}");
    assert!(conf.contains("include 'postgresql.base.conf'"));
    assert!(sa.data_dir.join("postgresql.base.conf").is_file());
    assert!(!sa.data_dir.join("standby.signal").exists());
    assert_eq!(pg::query_text(&sa, "SHOW cluster_name").await, "pgw-test");
    assert_eq!(pg::query_text(&sa, "SHOW wal_log_hints").await, "on");

    let st = a.status().await.unwrap();
    assert!(!st.in_recovery);
    assert!(st.server_version >= 150000, "{st:?}");
    assert!(st.wal_position > 0);
    assert_eq!(st.timeline, 1);
    assert!(!st.sysid.is_empty());
    assert!(
        st.postmaster_start_time.len() >= 26 && st.postmaster_start_time.contains('+'),
        "{st:?}"
    );
    assert!(st.replication.is_empty());
    assert!(!st.pending_restart);

    // --- users
    a.post_bootstrap().await.unwrap();
    a.post_bootstrap().await.unwrap(); // idempotent
    assert_eq!(
        pg::query_text(
            &sa,
            "SELECT rolreplication::text FROM pg_roles WHERE rolname = 'replicator'"
        )
        .await,
        "true"
    );
    assert_eq!(
        pg::query_text(
            &sa,
            "SELECT has_function_privilege('rewinder', 'pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)', 'EXECUTE')::text"
        )
        .await,
        "true"
    );

    // --- slots: create, drop stale inactive ones
    a.query_one_shot("SELECT pg_create_physical_replication_slot('stale')")
        .await
        .unwrap();
    a.ensure_replication_slots(&["node_b".to_string()])
        .await
        .unwrap();
    assert_eq!(
        pg::query_text(
            &sa,
            "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots"
        )
        .await,
        "node_b"
    );

    // --- replica B: basebackup (password from the pgpass file), start, streaming
    let ci_a_nopw = a.conninfo_for(
        "127.0.0.1",
        sa.port,
        &without_password(&sa.replication),
        "node-b",
    );
    b.basebackup(&ci_a_nopw).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sb.data_dir)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert!(matches!(
        b.data_dir_state().await,
        DataDirState::Initialized(_)
    ));
    assert!(
        b.basebackup(&ci_a_nopw).await.is_err(),
        "basebackup into a non-empty dir must fail"
    );
    let ci_a = a.conninfo_for("127.0.0.1", sa.port, &sa.replication, "node-b");
    b.start(StartAs::Replica {
        primary_conninfo: Some(ci_a),
        slot: Some("node_b".into()),
    })
    .await
    .unwrap();
    assert!(sb.data_dir.join("standby.signal").exists());
    let st = wait_streaming(&b, 1).await;
    assert!(
        st.receive_lsn.unwrap() > 0 && st.replay_lsn.unwrap() > 0,
        "{st:?}"
    );
    assert_eq!(
        st.wal_position,
        st.receive_lsn.unwrap().max(st.replay_lsn.unwrap())
    );
    assert_eq!(st.timeline, 1);
    assert_eq!(st.sysid, a.status().await.unwrap().sysid);
    wait_walsender(&a, "node-b").await;
    let row = a
        .status()
        .await
        .unwrap()
        .replication
        .into_iter()
        .find(|r| r.application_name == "node-b")
        .unwrap();
    assert_eq!(row.usename, "replicator");
    assert_eq!(row.client_addr.as_deref(), Some("127.0.0.1"));
    assert_eq!(row.sync_state, "async");
    assert_eq!(
        pg::query_text(
            &sa,
            "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'node_b'"
        )
        .await,
        "true"
    );

    a.query_one_shot("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    pg::wait_for("row replicated to B", Duration::from_secs(60), || async {
        let c = pg::client(&sb).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_tables WHERE tablename = 't'", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;

    // --- follow: new primary_conninfo via reload, no restart
    let pid_b = b.pid().unwrap();
    let ci_a2 = a.conninfo_for("127.0.0.1", sa.port, &sa.replication, "node-b2");
    assert!(
        !b.follow(Some(ci_a2), Some("node_b".into())).await.unwrap(),
        "follow must not restart"
    );
    assert_eq!(b.pid(), Some(pid_b));
    wait_walsender(&a, "node-b2").await;
    assert!(
        pg::query_text(&sb, "SHOW primary_conninfo")
            .await
            .contains("node-b2")
    );

    // --- promote B
    b.promote().await.unwrap();
    let st = b.status().await.unwrap();
    assert!(!st.in_recovery, "{st:?}");
    assert_eq!(st.timeline, 2);
    assert!(st.replication_state.is_none());
    assert!(
        !st.pending_restart,
        "promote must not leave a pending restart: {st:?}"
    );
    assert!(!sb.data_dir.join("standby.signal").exists());
    let conf = std::fs::read_to_string(sb.data_dir.join("postgresql.conf")).unwrap();
    assert!(!conf.contains("primary_conninfo"), "{conf}");
    assert_eq!(b.pid(), Some(pid_b));

    // --- A diverges (still a primary on timeline 1), then crashes (immediate stop), so rewind
    // has to run single-user crash recovery first
    a.query_one_shot("INSERT INTO t VALUES (666)")
        .await
        .unwrap();
    a.stop(StopMode::Immediate, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!a.is_running());
    assert!(a.pid().is_none());
    assert!(!pg::accepts_connections(&sa).await);
    match a.data_dir_state().await {
        DataDirState::Initialized(c) => assert_eq!(c.cluster_state, "in production"),
        other => panic!("{other:?}"),
    }

    // --- rewind A from B (the replicator user in the conninfo is replaced by the rewind user)
    b.query_one_shot("CHECKPOINT").await.unwrap();
    b.ensure_replication_slots(&["node_a".to_string()])
        .await
        .unwrap();
    let ci_b_nopw = b.conninfo_for(
        "127.0.0.1",
        sb.port,
        &without_password(&sa.replication),
        "node-a",
    );
    a.rewind(&ci_b_nopw).await.unwrap();
    assert!(sa.data_dir.join("standby.signal").exists());

    let ci_b = b.conninfo_for("127.0.0.1", sb.port, &sa.replication, "node-a");
    a.start(StartAs::Replica {
        primary_conninfo: Some(ci_b),
        slot: Some("node_a".into()),
    })
    .await
    .unwrap();
    let st = wait_streaming(&a, 2).await;
    assert_eq!(st.timeline, 2);
    wait_walsender(&b, "node-a").await;
    b.query_one_shot("INSERT INTO t VALUES (2)").await.unwrap();
    pg::wait_for("row 2 on A", Duration::from_secs(60), || async {
        let c = pg::client(&sa).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM t WHERE x = 2", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(
        pg::query_text(&sa, "SELECT count(*)::text FROM t WHERE x = 666").await,
        "0",
        "diverged row must be gone"
    );

    a.stop(StopMode::Fast, Duration::from_secs(60))
        .await
        .unwrap();
    b.stop(StopMode::Fast, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!a.is_running() && !b.is_running());
}

/// Test 4 (+ foreign postmaster, crash recovery before rewind-style restarts, kill_now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_immediate_kill_now_and_foreign_postmaster() {
    if prelude("stop_immediate_kill_now_and_foreign_postmaster") {
        return;
    }
    let dir = pg::TestDir::new("stop");
    let s = pg::settings(&dir.path, "a", pg::free_port());
    let mut p = Postgres::new(s.clone());
    p.initdb().await.unwrap();
    p.start(StartAs::Primary).await.unwrap();
    p.query_one_shot("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    // immediate stop: fast, no connections afterwards, pg_control not cleanly shut down
    let pid = p.pid().unwrap() as i32;
    let t = Instant::now();
    p.stop(StopMode::Immediate, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "immediate stop took {:?}",
        t.elapsed()
    );
    assert!(!p.is_running());
    assert!(pg::pid_gone(pid));
    assert!(!pg::accepts_connections(&s).await);
    assert!(p.status().await.is_err());
    match p.data_dir_state().await {
        DataDirState::Initialized(c) => assert_eq!(c.cluster_state, "in production"),
        other => panic!("{other:?}"),
    }
    // stop when stopped is fine
    p.stop(StopMode::Fast, Duration::from_secs(5))
        .await
        .unwrap();

    // restart (crash recovery), then kill_now
    p.start(StartAs::Primary).await.unwrap();
    assert_eq!(
        pg::query_text(&s, "SELECT count(*)::text FROM t").await,
        "1"
    );
    let pid = p.pid().unwrap() as i32;
    let t = Instant::now();
    p.kill_now();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!p.is_running());
    assert!(
        pg::pid_gone(pid),
        "postmaster {pid} still alive after kill_now"
    );
    pg::wait_for(
        "no connections after kill_now",
        Duration::from_secs(30),
        || async { (!pg::accepts_connections(&s).await).then_some(()) },
    )
    .await;

    // a postmaster not started by this Postgres value is reported, refused, and stoppable
    p.start(StartAs::Primary).await.unwrap();
    let pid = p.pid().unwrap() as i32;
    let mut other = Postgres::new(s.clone());
    assert_eq!(other.foreign_postmaster(), Some(pid));
    assert!(other.is_running());
    assert_eq!(other.pid(), None);
    assert!(matches!(
        other.start(StartAs::Primary).await,
        Err(PgError::ForeignPostmaster { .. })
    ));
    assert!(other.status().await.is_ok());
    other
        .stop(StopMode::Fast, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        !p.is_running(),
        "our child must have exited after the foreign stop"
    );

    // a bad setting: start reports the exit with the postmaster's own message
    let mut bad = s.clone();
    bad.parameters
        .insert("shared_buffers".into(), "lots".into());
    p.update_settings(bad);
    match p.start(StartAs::Primary).await {
        Err(PgError::Exited { stderr_tail, .. }) => {
            assert!(stderr_tail.contains("shared_buffers"), "{stderr_tail}")
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    assert!(!p.is_running());
    p.update_settings(s.clone());

    // basebackup from nowhere: two attempts, a clear error, the target left empty
    let sc = pg::settings(&dir.path, "c", pg::free_port());
    let c = Postgres::new(sc.clone());
    let t = Instant::now();
    let dead = c.conninfo_for("127.0.0.1", pg::free_port(), &sc.replication, "c");
    match c.basebackup(&dead).await {
        Err(PgError::Command {
            command,
            stderr_tail,
            ..
        }) => {
            assert!(
                command.starts_with("pg_basebackup") && !command.contains("rep pass"),
                "{command}"
            );
            assert!(stderr_tail.contains("connection"), "{stderr_tail}");
        }
        other => panic!("expected Command error, got {other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_secs(4),
        "expected a retry pause"
    );
    assert_eq!(c.data_dir_state().await, DataDirState::Empty);

    // the data dir can now be moved aside
    p.remove_data_dir().unwrap();
    assert_eq!(p.data_dir_state().await, DataDirState::Empty);
    let moved: Vec<_> = std::fs::read_dir(s.data_dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.failed."))
        .collect();
    assert_eq!(moved.len(), 1);
}

const HELPER_DIR_ENV: &str = "PGWARDEN_IT_HELPER_DIR";

/// Not a test by itself: the process test 3 kills. Without the env var it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_postmaster_parent() {
    let Some(dir) = std::env::var_os(HELPER_DIR_ENV) else {
        return;
    };
    pg::init_tracing();
    let dir = std::path::PathBuf::from(dir);
    let port: u16 = std::env::var("PGWARDEN_IT_HELPER_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let s = pg::settings(&dir, "h", port);
    let mut p = Postgres::new(s);
    p.initdb().await.unwrap();
    p.start(StartAs::Primary).await.unwrap();
    std::fs::write(dir.join("postmaster.pid.txt"), p.pid().unwrap().to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// Test 3: kill -9 of the parent (pgwarden) takes the postmaster down (PDEATHSIG).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_kill_9_leaves_no_postmaster() {
    if prelude("parent_kill_9_leaves_no_postmaster") {
        return;
    }
    let dir = pg::TestDir::new("pdeath");
    let port = pg::free_port();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_postmaster_parent",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_DIR_ENV, &dir.path)
        .env("PGWARDEN_IT_HELPER_PORT", port.to_string())
        .spawn()
        .unwrap();
    let pid_file = dir.path.join("postmaster.pid.txt");
    let pid: i32 = pg::wait_for("helper started postgres", Duration::from_secs(120), || {
        if let Ok(Some(st)) = helper.try_wait() {
            panic!("helper exited early: {st}");
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        async move { pid }
    })
    .await;
    assert!(!pg::pid_gone(pid));
    let s = pg::settings(&dir.path, "h", port);
    assert!(pg::accepts_connections(&s).await);

    helper.kill().unwrap(); // SIGKILL
    helper.wait().unwrap();
    pg::wait_for(
        "postmaster gone after parent SIGKILL",
        Duration::from_secs(30),
        || async { pg::pid_gone(pid).then_some(()) },
    )
    .await;
    pg::wait_for("no connections", Duration::from_secs(30), || async {
        (!pg::accepts_connections(&s).await).then_some(())
    })
    .await;
}
