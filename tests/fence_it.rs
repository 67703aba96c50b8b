//! The lease fence against real processes: killing every process of a data directory (backends
//! included), the `pgwarden fence-helper` process on its own, a frozen agent fenced by it, and
//! the watchdog on a fake device (a FIFO; never /dev/watchdog).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/pg.rs"]
mod pg;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Backend, Cluster, Timings};
use pgwarden::postgres::{
    PgSettings, Postgres, StartAs, kill_data_dir_processes, postgres_processes_in,
};

const T: Timings = Timings {
    ttl: 6,
    loop_wait: 1,
    retry_timeout: 2,
};

/// Skip/fail on missing PostgreSQL; when root, re-run as postgres. True: the caller returns.
fn prelude(test_name: &str) -> bool {
    pg::init_tracing();
    if !pg::pg_available() {
        return true;
    }
    pg::run_as_postgres_if_root(test_name)
}

fn boottime_ns() -> u64 {
    pgwarden::agent::clock::boottime_now().as_nanos() as u64
}

/// The fence process's message: deadline (CLOCK_BOOTTIME ns, 0 = disarmed), ttl (ms).
fn message(deadline_ns: u64, ttl_ms: u64) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&deadline_ns.to_le_bytes());
    m[8..].copy_from_slice(&ttl_ms.to_le_bytes());
    m
}

/// Live processes of `data_dir` (zombies do not count: they commit nothing).
fn processes_of(data_dir: &Path) -> Vec<i32> {
    let dir = std::fs::canonicalize(data_dir).expect("data dir");
    postgres_processes_in(&dir)
}

/// Polls `check` every 20 ms until true; how long it took, or `None` after `timeout`.
fn within(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// An initialised, running primary under `dir`.
async fn running_primary(dir: &Path, name: &str) -> (Postgres, PgSettings) {
    let s = pg::settings(dir, name, pg::free_port());
    let mut p = Postgres::new(s.clone());
    p.initdb().await.expect("initdb");
    p.start(StartAs::Primary).await.expect("start");
    (p, s)
}

/// A client whose backend is busy in `pg_sleep(600)`; the backend's pid and the query's task.
async fn busy_backend(
    s: &PgSettings,
) -> (
    i32,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let c = pg::client(s).await;
    let row = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap();
    let pid: i32 = row.get(0);
    let task = tokio::spawn(async move {
        c.batch_execute("BEGIN; CREATE TABLE held (x int); SELECT pg_sleep(600)")
            .await
    });
    // the statement is in flight once the backend reports it
    let probe = pg::client(s).await;
    pg::wait_for("the backend to run pg_sleep", Duration::from_secs(10), || {
        let probe = &probe;
        async move {
            let r = probe
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'",
                    &[&pid],
                )
                .await
                .ok()?;
            (r.get::<_, i64>(0) == 1).then_some(())
        }
    })
    .await;
    (pid, task)
}

/// Kill: one call SIGKILLs every process of the data directory, the session-leader backend
/// in the middle of a statement included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_data_dir_processes_kills_backends_too() {
    if prelude("kill_data_dir_processes_kills_backends_too") {
        return;
    }
    let dir = pg::TestDir::new("fence-kill");
    let (p, s) = running_primary(&dir.path, "a").await;
    let postmaster = p.pid().expect("postmaster pid") as i32;
    let (backend, query) = busy_backend(&s).await;
    // SAFETY: getsid on a pid only reads.
    assert_eq!(
        unsafe { libc::getsid(backend) },
        backend,
        "a backend leads its own session: the postmaster's group does not reach it"
    );
    let before = processes_of(&s.data_dir);
    assert!(
        before.contains(&postmaster) && before.contains(&backend),
        "{before:?}"
    );

    let killed = kill_data_dir_processes(&s.data_dir);
    // (short-lived processes of `before` may have exited on their own meanwhile)
    assert!(killed >= 2, "killed {killed} of {before:?}");
    let gone = within(Duration::from_secs(10), || {
        processes_of(&s.data_dir).is_empty() && pg::pid_gone(backend) && pg::pid_gone(postmaster)
    });
    assert!(
        gone.is_some(),
        "still alive: {:?}",
        processes_of(&s.data_dir)
    );
    assert_eq!(
        kill_data_dir_processes(&s.data_dir),
        0,
        "confirmed down: nothing left"
    );
    let r = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query ends")
        .unwrap();
    assert!(r.is_err(), "the statement in flight must not complete");
    drop(p);
}

fn spawn_helper(data_dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("fence-helper")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgwarden fence-helper")
}

fn output_of(mut helper: Child) -> (String, String) {
    use std::io::Read;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = helper.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = helper.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (out, err)
}

/// The fence process on its own: a disarm before the deadline keeps PostgreSQL; a deadline
/// that passes without a new message kills every process of the data directory while the
/// fence keeps running; closing its stdin (the agent gone) kills PostgreSQL and ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_helper_kills_at_the_deadline_and_at_the_end_of_its_input() {
    if prelude("fence_helper_kills_at_the_deadline_and_at_the_end_of_its_input") {
        return;
    }
    let dir = pg::TestDir::new("fence-helper");
    let (mut p, s) = running_primary(&dir.path, "a").await;
    let (backend, query) = busy_backend(&s).await;
    let mut helper = spawn_helper(&s.data_dir, &[]);
    let mut stdin = helper.stdin.take().unwrap();

    // armed, then disarmed before the deadline: nothing happens
    stdin
        .write_all(&message(boottime_ns() + 500_000_000, 6000))
        .unwrap();
    stdin.write_all(&message(0, 0)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        processes_of(&s.data_dir).contains(&backend),
        "a disarmed fence must not kill"
    );

    // armed for 1 s, and then the "agent" says nothing more
    let armed_at = Instant::now();
    stdin
        .write_all(&message(boottime_ns() + 1_000_000_000, 6000))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        processes_of(&s.data_dir).contains(&backend),
        "killed before the deadline"
    );
    let gone = within(Duration::from_secs(10), || {
        processes_of(&s.data_dir).is_empty() && pg::pid_gone(backend)
    });
    assert!(
        gone.is_some(),
        "the fence process did not kill PostgreSQL: {:?}",
        processes_of(&s.data_dir)
    );
    assert!(
        armed_at.elapsed() >= Duration::from_millis(950),
        "killed before the deadline"
    );
    assert!(
        helper.try_wait().unwrap().is_none(),
        "the fence process keeps running after a kill"
    );
    let r = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query ends")
        .unwrap();
    assert!(r.is_err(), "the statement in flight must not complete");

    // PostgreSQL again (once the killed postmaster, our child, has been reaped), a new far
    // deadline, then the end of the fence's input
    let reaped = within(Duration::from_secs(10), || !p.is_running());
    assert!(reaped.is_some(), "the killed postmaster is reaped");
    // The fence kills until one scan of the data directory (every 20 ms) finds nothing: let it
    // make that scan (generously, for a loaded machine), or it kills the server started next.
    std::thread::sleep(Duration::from_secs(1));
    p.start(StartAs::Primary).await.expect("restart");
    assert!(!processes_of(&s.data_dir).is_empty());
    stdin
        .write_all(&message(boottime_ns() + 600_000_000_000, 6000))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !processes_of(&s.data_dir).is_empty(),
        "a re-armed fence kills only at its deadline"
    );
    drop(stdin);
    let exited = within(Duration::from_secs(10), || {
        helper.try_wait().unwrap().is_some()
    });
    assert!(exited.is_some(), "the fence process must exit at EOF");
    assert!(
        processes_of(&s.data_dir).is_empty(),
        "at EOF the fence process kills PostgreSQL before it exits"
    );
    let status = helper.wait().unwrap();
    assert!(status.success(), "{status}");
    let (out, err) = output_of(helper);
    assert_eq!(out, "", "the fence process writes nothing to stdout");
    assert!(
        err.contains("leader lock deadline passed") && err.contains("SIGKILL"),
        "{err}"
    );
    drop(p);
}

/// Processes whose parent is `parent` and whose command line contains `needle`.
fn children_matching(parent: i32, needle: &str) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// A frozen agent (SIGSTOP) does not extend the writable window: its fence process kills
/// every PostgreSQL process by the lease deadline; after SIGCONT the agent recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_agent_is_fenced_by_its_fence_process() {
    let Some(c) = Cluster::start(Backend::Etcd, "fencefrozen", 1, T).await else {
        return;
    };
    let long = Duration::from_secs(90);
    c.wait_for("m0 to lead", long, || async {
        c.leader().await.filter(|l| l == "m0")
    })
    .await;
    c.wait_for("writes", long, || async {
        c.sql(0, "CREATE TABLE IF NOT EXISTS f (id int)").await.ok()
    })
    .await;
    let data_dir = c.dir.join("m0").join("data");
    let agent = c.members[0].child.as_ref().unwrap().id();
    let helpers = children_matching(agent as i32, "fence-helper");
    assert_eq!(helpers.len(), 1, "one fence process per agent");
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname=postgres",
        c.members[0].pg_port
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let query = tokio::spawn(async move {
        client
            .batch_execute("BEGIN; INSERT INTO f VALUES (1); SELECT pg_sleep(600)")
            .await
    });
    assert!(processes_of(&data_dir).contains(&backend));

    signal(agent, libc::SIGSTOP);
    let stopped_at = Instant::now();
    let bound = Duration::from_secs(T.ttl + 3);
    let gone = within(bound, || processes_of(&data_dir).is_empty());
    let still = processes_of(&data_dir);
    if gone.is_none() {
        signal(agent, libc::SIGCONT);
        c.dump_logs();
        panic!("PostgreSQL still runs {bound:?} after the agent froze: {still:?}");
    }
    assert!(
        c.sql(0, "INSERT INTO f VALUES (2)").await.is_err(),
        "no writes after the fence fired"
    );
    // a process in exit has released its cwd before it becomes a zombie
    assert!(
        within(Duration::from_secs(5), || pg::pid_gone(backend)).is_some(),
        "the busy backend is killed too"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("the query ends")
            .unwrap()
            .is_err()
    );
    assert!(
        !pg::pid_gone(helpers[0]),
        "the fence process outlives the kill"
    );
    eprintln!(
        "PostgreSQL fenced {:?} after the agent froze",
        stopped_at.elapsed()
    );

    signal(agent, libc::SIGCONT);
    c.wait_for("m0 to lead again", long, || async {
        c.leader().await.filter(|l| l == "m0")
    })
    .await;
    c.wait_for("writes after the agent recovered", long, || async {
        c.sql(0, "INSERT INTO f VALUES (3)").await.ok()
    })
    .await;
    let (code, body) = c.api(0, reqwest::Method::GET, "/primary", None).await;
    assert_eq!(code, 200, "{body}");
}

/// A FIFO standing in for the watchdog device, writable by the member, opened for reading.
fn fake_watchdog(dir: &Path) -> (PathBuf, std::fs::File) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("watchdog.fifo");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    (path, reader)
}

/// Whatever the fake device holds now (nonblocking).
fn drain(reader: &mut std::fs::File, into: &mut Vec<u8>) {
    use std::io::Read;
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(_) => return,
        }
    }
}

/// `watchdog: {mode: automatic, device: FIFO}`: the leader's fence process writes a keepalive
/// at every renewal and the magic close `V` when the member stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_gets_keepalives_and_the_magic_close() {
    let Some(mut c) = Cluster::start(Backend::Etcd, "fencewd", 0, T).await else {
        return;
    };
    let (device, mut reader) = fake_watchdog(&c.dir);
    c.add_member(&format!(
        "watchdog:\n  mode: automatic\n  device: {}\n  safety_margin: 2\n",
        device.display()
    ))
    .await;
    c.spawn(0);
    let long = Duration::from_secs(90);
    c.wait_for("m0 to lead", long, || async {
        c.leader().await.filter(|l| l == "m0")
    })
    .await;
    let mut bytes = Vec::new();
    let until = Instant::now() + long;
    while bytes.iter().filter(|b| **b == b'1').count() < 3 {
        if Instant::now() > until {
            c.dump_logs();
            panic!("no keepalives: {:?}", String::from_utf8_lossy(&bytes));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        drain(&mut reader, &mut bytes);
    }
    assert!(
        !bytes.contains(&b'V'),
        "no magic close while leading: {bytes:?}"
    );
    let status = c.terminate(0).expect("m0 exits");
    assert!(status.success(), "{status}");
    let closed = within(Duration::from_secs(10), || {
        drain(&mut reader, &mut bytes);
        bytes.last() == Some(&b'V')
    });
    let log = std::fs::read_to_string(c.log_path(0)).unwrap_or_default();
    assert!(
        closed.is_some(),
        "no magic close after the stop: {:?}; log:\n{log}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        log.contains("does not support WDIOC_SETTIMEOUT"),
        "a FIFO has no timeout ioctl: the fence warns and writes plainly"
    );
}

/// `watchdog: {mode: required}` with a device that does not exist: the agent refuses to start
/// with one line naming `watchdog.device`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_watchdog_without_a_device_refuses_to_start() {
    let Some(mut c) = Cluster::start(Backend::Etcd, "fencewdreq", 0, T).await else {
        return;
    };
    let missing = c.dir.join("no-such-watchdog");
    c.add_member(&format!(
        "watchdog:\n  mode: required\n  device: {}\n",
        missing.display()
    ))
    .await;
    c.spawn(0);
    let child = c.members[0].child.as_mut().unwrap();
    let mut status = None;
    let exited = within(Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let log = std::fs::read_to_string(c.log_path(0)).unwrap_or_default();
    assert!(exited.is_some(), "the agent must not start; log:\n{log}");
    assert_eq!(status.unwrap().code(), Some(1), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("pgwarden: "))
        .unwrap_or_default();
    assert!(
        line.contains("watchdog.device") && line.contains(&*missing.to_string_lossy()),
        "{log}"
    );
    assert!(
        !c.dir.join("m0").join("data").join("PG_VERSION").exists(),
        "nothing was bootstrapped"
    );
}

/// `watchdog: {mode: required}` on a FIFO: the member leads once its fence process has the
/// device open; when the device breaks (its reader goes away, so a keepalive fails) the
/// primary is demoted at once, and while the device cannot be opened the member takes the lock
/// now and then but never promotes. With a reader again, it leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_watchdog_that_fails_demotes_the_primary_and_blocks_promotion() {
    let Some(mut c) = Cluster::start(Backend::Etcd, "fencewdfail", 0, T).await else {
        return;
    };
    let (device, reader) = fake_watchdog(&c.dir);
    c.add_member(&format!(
        "watchdog:\n  mode: required\n  device: {}\n  safety_margin: 2\n",
        device.display()
    ))
    .await;
    c.spawn(0);
    let long = Duration::from_secs(90);
    c.wait_for("m0 to lead with its watchdog", long, || async {
        let (code, _) = c.api(0, reqwest::Method::GET, "/primary", None).await;
        (code == 200).then_some(())
    })
    .await;
    let log = || std::fs::read_to_string(c.log_path(0)).unwrap_or_default();
    assert!(
        !log().contains("could not be activated"),
        "no failure yet:\n{}",
        log()
    );

    // The device breaks: the next keepalive fails and the primary goes.
    drop(reader);
    c.wait_for("m0 to demote itself", Duration::from_secs(30), || async {
        let (code, _) = c.api(0, reqwest::Method::GET, "/primary", None).await;
        (code != 200 && log().contains("demoting self because the watchdog could not be activated"))
            .then_some(())
    })
    .await;
    // While the device cannot be opened (a FIFO without a reader): PostgreSQL is never
    // writable again, though the member tries (it takes the lock after its back-off, then
    // gives it back; `/primary` answers 200 for those moments, as Patroni's does for a lock
    // holder, so PostgreSQL itself is asked).
    let until = Instant::now() + Duration::from_secs(3 * T.ttl);
    while Instant::now() < until {
        let recovery = c.sql(0, "SELECT pg_is_in_recovery()::text").await;
        assert_ne!(
            recovery.as_deref().ok(),
            Some(&["false".to_string()][..]),
            "a writable primary without its required watchdog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log().contains("not promoting self because the watchdog could not be activated"),
        "{}",
        log()
    );

    // A reader again: the next attempt opens the device and m0 leads.
    use std::os::unix::fs::OpenOptionsExt;
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&device)
        .unwrap();
    c.wait_for("m0 to lead again", long, || async {
        let (code, _) = c.api(0, reqwest::Method::GET, "/primary", None).await;
        (code == 200).then_some(())
    })
    .await;
    c.wait_for("writes on m0", long, || async {
        c.sql(0, "CREATE TABLE IF NOT EXISTS wd (i int)").await.ok()
    })
    .await;
    let mut bytes = Vec::new();
    assert!(
        within(Duration::from_secs(10), || {
            drain(&mut reader, &mut bytes);
            bytes.contains(&b'1')
        })
        .is_some(),
        "keepalives again"
    );
}
