//! The workload under the faults, and what it records for the checker:
//! - clients, in the test's own namespace, inserting unique ids into whichever member accepts
//!   writes (libpq's read-write host list) and logging every acknowledgement;
//! - a probe inside each member's network namespace, trying a write on that member's own
//!   PostgreSQL every 50 ms, so that a member cut off from everything is still seen writing
//!   (or not).
//!
//! Times are seconds since the workload started, on the test's monotonic clock.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// How often each probe tries a write.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long a write may take before it counts as not accepted (the connection is then
/// dropped: a commit still waiting is in doubt, never acknowledged).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The tables the workload writes, made on the primary before it starts.
/// Clients and probes write as an ordinary role, as applications do: when commits wait (strict
/// mode with no standby) their abandoned sessions pile up to `max_connections`, and the
/// connections PostgreSQL reserves for superusers stay free for the agent.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS fault_writes (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now()); \
     CREATE TABLE IF NOT EXISTS fault_probes (member text NOT NULL, at timestamptz NOT NULL DEFAULT now()); \
     CREATE ROLE fault_writer LOGIN PASSWORD 'writer'; \
     GRANT INSERT ON fault_writes, fault_probes TO fault_writer";

/// One probe attempt on one member.
#[derive(Clone, Copy, Debug)]
pub struct ProbeAttempt {
    pub member: usize,
    /// When the write was acknowledged; `None`: refused, failed or timed out.
    pub acked: Option<f64>,
}

/// Everything recorded so far.
#[derive(Default)]
pub struct Record {
    /// `(id, acknowledged at)` of every client write acknowledged.
    pub acks: Vec<(i64, f64)>,
    pub probes: Vec<ProbeAttempt>,
}

pub struct Workload {
    pub started: Instant,
    pub record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    probes: Vec<std::thread::JoinHandle<()>>,
}

/// Where a member is: its network namespace, address and PostgreSQL port.
#[derive(Clone)]
pub struct Endpoint {
    pub netns: std::path::PathBuf,
    pub host: String,
    pub port: u16,
}

impl Workload {
    /// Starts `clients` clients writing to `members` and a probe per member.
    pub fn start(members: &[Endpoint], clients: usize) -> Workload {
        let started = Instant::now();
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicI64::new(1));
        let cfg = read_write_config(members);
        let clients = (0..clients)
            .map(|_| {
                let (cfg, record, stop, next_id) =
                    (cfg.clone(), record.clone(), stop.clone(), next_id.clone());
                tokio::spawn(client(cfg, record, stop, next_id, started))
            })
            .collect();
        let probes = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (m, record, stop) = (m.clone(), record.clone(), stop.clone());
                std::thread::spawn(move || probe(i, m, record, stop, started))
            })
            .collect();
        Workload {
            started,
            record,
            stop,
            clients,
            probes,
        }
    }

    /// Seconds since the workload started.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Stops every client and probe; what they recorded.
    pub async fn stop(self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            let _ = c.await;
        }
        for p in self.probes {
            let _ = tokio::task::spawn_blocking(move || p.join()).await;
        }
        std::mem::take(&mut *self.record.lock().unwrap())
    }
}

fn read_write_config(members: &[Endpoint]) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    for m in members {
        cfg.host(&m.host).port(m.port);
    }
    cfg.user("fault_writer")
        .password("writer")
        .dbname("postgres")
        .connect_timeout(Duration::from_millis(500))
        .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    cfg
}

async fn client(
    cfg: tokio_postgres::Config,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    next_id: Arc<AtomicI64>,
    started: Instant,
) {
    let mut conn: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.take() {
            Some(c) => c,
            None => match tokio::time::timeout(Duration::from_secs(3), cfg.connect(NoTls)).await {
                Ok(Ok((c, connection))) => {
                    tokio::spawn(connection);
                    c
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let insert = c.execute("INSERT INTO fault_writes (id) VALUES ($1)", &params);
        // Refused (read-only), failed or in doubt: the connection is dropped, and a new one
        // finds the primary.
        if let Ok(Ok(_)) = tokio::time::timeout(WRITE_TIMEOUT, insert).await {
            let at = started.elapsed().as_secs_f64();
            record.lock().unwrap().acks.push((id, at));
            conn = Some(c);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The probe's thread: enters the member's network namespace (this thread only), then writes
/// every [`PROBE_EVERY`] on its own runtime.
fn probe(
    member: usize,
    ep: Endpoint,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    started: Instant,
) {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(&ep.netns).expect("open the member's namespace");
    // SAFETY: setns(2) on a namespace file we hold open; it moves this thread only.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "enter the member's namespace: {}",
        std::io::Error::last_os_error()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("probe runtime");
    rt.block_on(async move {
        let conn = format!(
            "host={} port={} user=fault_writer password=writer dbname=postgres connect_timeout=1",
            ep.host, ep.port
        );
        let insert_sql = format!("INSERT INTO fault_probes (member) VALUES ('m{member}')");
        let mut client: Option<tokio_postgres::Client> = None;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let c = match client.take() {
                Some(c) => c,
                None => {
                    let connect = tokio_postgres::connect(&conn, NoTls);
                    match tokio::time::timeout(WRITE_TIMEOUT, connect).await {
                        Ok(Ok((c, connection))) => {
                            tokio::spawn(connection);
                            c
                        }
                        _ => {
                            record_probe(&record, member, None);
                            continue;
                        }
                    }
                }
            };
            let insert = c.execute(insert_sql.as_str(), &[]);
            let (acked, keep) = match tokio::time::timeout(WRITE_TIMEOUT, insert).await {
                Ok(Ok(_)) => (Some(started.elapsed().as_secs_f64()), true),
                // PostgreSQL answered (a replica refuses): the connection is still good.
                Ok(Err(e)) => (None, e.as_db_error().is_some() && !c.is_closed()),
                // In doubt: a commit may still be waiting; start afresh.
                Err(_) => (None, false),
            };
            if keep {
                client = Some(c);
            }
            record_probe(&record, member, acked);
        }
    });
}

fn record_probe(record: &Mutex<Record>, member: usize, acked: Option<f64>) {
    record
        .lock()
        .unwrap()
        .probes
        .push(ProbeAttempt { member, acked });
}
