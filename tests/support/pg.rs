//! Reusable helpers for tests that run a real PostgreSQL.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgwarden::postgres::{Credentials, PgSettings};

/// Env marker: we are the re-executed test running as the `postgres` user.
pub const AS_POSTGRES_MARKER: &str = "PGWARDEN_IT_AS_POSTGRES";

pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("PGWARDEN_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Logs to the test output (`RUST_LOG`, default `info`).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| "info".parse().expect("a level parses"));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .with(filter)
        .try_init();
}

/// Whether PostgreSQL binaries (and, as root, the `postgres` user and `runuser`) exist.
/// Missing: panics when `CI=true`, else prints a note and returns false (skip).
pub fn pg_available() -> bool {
    let mut missing = vec![];
    for b in [
        "postgres",
        "initdb",
        "pg_ctl",
        "pg_controldata",
        "pg_basebackup",
        "pg_rewind",
    ] {
        if !pg_bin_dir().join(b).is_file() {
            missing.push(format!("{}", pg_bin_dir().join(b).display()));
        }
    }
    if nix::unistd::geteuid().is_root() {
        if nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .is_none()
        {
            missing.push("user postgres".into());
        }
        if !Path::new("/usr/sbin/runuser").exists() && !Path::new("/sbin/runuser").exists() {
            missing.push("runuser".into());
        }
    }
    if missing.is_empty() {
        return true;
    }
    if in_ci() {
        panic!("CI=true but PostgreSQL test prerequisites are missing: {missing:?}");
    }
    eprintln!("SKIPPED: PostgreSQL test prerequisites missing: {missing:?}");
    false
}

/// PostgreSQL refuses to run as root. When root: re-run this one test as `postgres` (with
/// [`AS_POSTGRES_MARKER`] set), assert it passed and return true (the caller returns).
pub fn run_as_postgres_if_root(test_name: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    assert!(
        std::env::var_os(AS_POSTGRES_MARKER).is_none(),
        "re-executed test {test_name} still runs as root"
    );
    let exe = std::env::current_exe().expect("current_exe");
    make_traversable(&exe);
    let status = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(AS_POSTGRES_MARKER, "1")
        .current_dir("/")
        .status()
        .expect("cannot run runuser");
    assert!(
        status.success(),
        "test {test_name} as user postgres failed: {status}"
    );
    true
}

/// chmod o+x on every parent directory and o+rx on the file, so `postgres` can run it.
fn make_traversable(exe: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = exe.to_path_buf();
    let mut first = true;
    loop {
        if let Ok(meta) = std::fs::metadata(&p) {
            let mode = meta.permissions().mode();
            let want = if first { mode | 0o005 } else { mode | 0o001 };
            if want != mode {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want));
            }
        }
        first = false;
        if !p.pop() || p.as_os_str().is_empty() {
            break;
        }
    }
}

/// A scratch directory under the temp dir, removed on drop unless the test panicked.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000;
        let path = std::env::temp_dir().join(format!("pgw-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A currently free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn replication_creds() -> Credentials {
    Credentials {
        username: "replicator".into(),
        password: Some("rep pass'\\x".into()),
    }
}

pub fn rewind_creds() -> Credentials {
    Credentials {
        username: "rewinder".into(),
        password: Some("rew:pass".into()),
    }
}

/// Settings for member `name` under `dir`: data in `<dir>/<name>/data`, socket in `<dir>/<name>`,
/// TCP on 127.0.0.1:`port`, local trust, passwords over TCP.
pub fn settings(dir: &Path, name: &str, port: u16) -> PgSettings {
    let base = dir.join(name);
    std::fs::create_dir_all(&base).unwrap();
    let parameters: BTreeMap<String, String> = [
        ("wal_level", "replica"),
        ("hot_standby", "on"),
        ("wal_log_hints", "on"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("max_connections", "30"),
        ("shared_buffers", "16MB"),
        ("fsync", "off"),
        ("wal_keep_size", "128MB"),
        ("password_encryption", "scram-sha-256"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    PgSettings {
        data_dir: base.join("data"),
        bin_dir: pg_bin_dir(),
        listen_host: "127.0.0.1".into(),
        port,
        connect_host: "127.0.0.1".into(),
        socket_dir: Some(base.clone()),
        name: name.into(),
        scope: "pgw-test".into(),
        parameters,
        pg_hba: vec![
            "local all all trust".into(),
            "host all all 127.0.0.1/32 scram-sha-256".into(),
            "host replication all 127.0.0.1/32 scram-sha-256".into(),
        ],
        superuser: Credentials {
            username: "postgres".into(),
            password: Some("su-pass".into()),
        },
        replication: replication_creds(),
        rewind: Some(rewind_creds()),
        pgpass: dir.join(format!("{name}.pgpass")),
        initdb_args: vec!["--encoding=UTF8".into(), "--locale=C".into()],
        basebackup_args: vec!["--checkpoint=fast".into()],
        pg_ctl_timeout: Duration::from_secs(60),
    }
}

/// A superuser client over the socket dir, for assertions.
pub async fn client(s: &PgSettings) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::new();
    c.host_path(s.socket_dir.as_ref().unwrap())
        .port(s.port)
        .user("postgres")
        .dbname("postgres");
    let (client, conn) = c
        .connect(tokio_postgres::NoTls)
        .await
        .expect("test client connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// First column of the first row, as text.
pub async fn query_text(s: &PgSettings, sql: &str) -> String {
    let c = client(s).await;
    let row = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    row.get::<_, Option<String>>(0).unwrap_or_default()
}

/// Can we open a connection at all (any server response)?
pub async fn accepts_connections(s: &PgSettings) -> bool {
    let mut c = tokio_postgres::Config::new();
    c.host_path(s.socket_dir.as_ref().unwrap())
        .port(s.port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    c.connect(tokio_postgres::NoTls).await.is_ok()
}

/// Polls `check` every 250 ms until it returns `Some`, panicking after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The process is gone (no /proc entry) or a zombie (exited, not yet reaped by init).
pub fn pid_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                == Some("Z")
        }
    }
}
