//! The benchmark of the synchronous modes (issue 9): a three-member cluster on loopback (real
//! PostgreSQL 15 and etcd; ttl 5, loop_wait 1, retry_timeout 2) with a client inserting a row
//! with a unique id every 20 ms through a libpq-style read-write host list, logging each
//! acknowledged insert. For each replication mode (asynchronous, `synchronous_mode: true`,
//! `synchronous_mode: quorum`) it reports:
//! (a) a rolling restart (SIGTERM to each agent in turn, m2, m1, m0, each restarted and the
//!     cluster healthy again before the next): total write unavailability (the sum of the gaps
//!     between acknowledged writes longer than two periods, less one period each) and the
//!     longest gap;
//! (b) in strict mode (`on` and `quorum`), the primary's agent and postmaster killed with -9:
//!     acknowledged writes missing on the new primary, and crash-to-first-write;
//! (c) pgbench (`-N`, 4 clients) on the primary: TPS and average latency.
//! Then the same against three members of Debian's Patroni 3.0.2 on the same etcd with the
//! same timings (Patroni 3.0.2 has no quorum mode), and a table of both.
//!
//! Run: `cargo bench --bench sync` (as root it runs members as `postgres`). Knobs:
//! `BENCH_ROLLS` (3), `BENCH_CRASHES` (3), `BENCH_PGBENCH_SECS` (20), `BENCH_PATRONI=0` to skip
//! Patroni. Prints figures; asserts nothing about time.

#[path = "../support/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Backend, Cluster, Timings, member_io};
use reqwest::Method;

const PERIOD: Duration = Duration::from_millis(20);
const PGBIN: &str = "/usr/lib/postgresql/15/bin";
const PATRONI: &str = "/usr/bin/patroni";
const LONG: Duration = Duration::from_secs(180);
const T: Timings = Timings {
    ttl: 5,
    loop_wait: 1,
    retry_timeout: 2,
};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Async,
    On,
    Quorum,
}

impl Mode {
    fn json(self) -> &'static str {
        match self {
            Mode::Async => "false",
            Mode::On => "true",
            Mode::Quorum => "\"quorum\"",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::On => "on",
            Mode::Quorum => "quorum",
        }
    }
}

/// One acknowledged insert: its id, when its commit was acknowledged, and the port of the
/// PostgreSQL that acknowledged it.
#[derive(Clone, Copy)]
struct Ack {
    id: u64,
    at: Instant,
    port: u16,
}

type Log = Arc<Mutex<Vec<Ack>>>;

/// The client, on a thread and runtime of its own (nothing the bench does blocks its ticks).
struct Writer {
    log: Log,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Inserts a row every 20 ms into `sbench`, reconnecting through the host list when its
    /// connection breaks or a commit takes over 1 s, as an application using libpq's
    /// read-write host list does.
    fn start(ports: Vec<u16>) -> Writer {
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (out, halt) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(write_loop(ports, out, halt));
        });
        Writer {
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn acks(&self) -> Vec<Ack> {
        self.log.lock().unwrap().clone()
    }
}

async fn write_loop(ports: Vec<u16>, out: Log, stop: Arc<AtomicBool>) {
    let cfg = cluster::read_write_config(&ports);
    let mut client: Option<(tokio_postgres::Client, u16)> = None;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut id = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            client = connect(&cfg).await;
        }
        let Some((c, port)) = &client else { continue };
        id += 1;
        let q = format!("INSERT INTO sbench VALUES ({id})");
        match tokio::time::timeout(Duration::from_secs(1), c.simple_query(&q)).await {
            Ok(Ok(_)) => out.lock().unwrap().push(Ack {
                id,
                at: Instant::now(),
                port: *port,
            }),
            _ => client = None,
        }
    }
}

/// A read-write connection and the port of the server it reached.
async fn connect(cfg: &tokio_postgres::Config) -> Option<(tokio_postgres::Client, u16)> {
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    let rows = tokio::time::timeout(
        Duration::from_secs(1),
        c.simple_query("SELECT inet_server_port()"),
    )
    .await
    .ok()?
    .ok()?;
    let port = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
        _ => None,
    })?;
    Some((c, port))
}

/// Total write unavailability in [from, to] (gaps longer than two periods, less one period
/// each) and the longest gap, in seconds.
fn gaps(acks: &[Ack], from: Instant, to: Instant) -> (f64, f64) {
    let w: Vec<Instant> = acks
        .iter()
        .map(|a| a.at)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let gs: Vec<Duration> = w.windows(2).map(|p| p[1] - p[0]).collect();
    let total = gs
        .iter()
        .filter(|g| **g > 2 * PERIOD)
        .map(|g| (*g - PERIOD).as_secs_f64())
        .sum();
    let longest = gs.iter().max().copied().unwrap_or(to - from).as_secs_f64();
    (total, longest)
}

/// Ids acknowledged before `upto` that the PostgreSQL at `port` lacks (`None`: not readable).
async fn missing(acks: &[Ack], upto: Instant, port: u16) -> Option<Vec<u64>> {
    let rows = member_io::sql("127.0.0.1", port, "SELECT id FROM sbench")
        .await
        .ok()?;
    let have: BTreeSet<u64> = rows.iter().filter_map(|s| s.parse().ok()).collect();
    Some(
        acks.iter()
            .filter(|a| a.at < upto && !have.contains(&a.id))
            .map(|a| a.id)
            .collect(),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Pgwarden,
    Patroni,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Pgwarden => "pgwarden",
            Kind::Patroni => "patroni",
        }
    }
}

struct Member {
    name: String,
    pg_port: u16,
    api_port: u16,
    data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

/// Three members of one system: pgwarden's are the harness's; Patroni's are started here, on
/// the harness's etcd, as the same user, with the same configuration plus `bin_dir`.
struct Sys<'a> {
    kind: Kind,
    c: &'a mut Cluster,
    members: Vec<Member>,
    patroni: Vec<Option<Child>>,
    http: reqwest::Client,
}

impl<'a> Sys<'a> {
    fn pgwarden(c: &'a mut Cluster) -> Sys<'a> {
        let members = c
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| Member {
                name: m.name.clone(),
                pg_port: m.pg_port,
                api_port: m.api_port,
                data_dir: c.dir.join(&m.name).join("data"),
                config: m.config.clone(),
                log: c.log_path(i),
            })
            .collect();
        Sys {
            kind: Kind::Pgwarden,
            c,
            members,
            patroni: Vec::new(),
            http: http(),
        }
    }

    fn patroni(c: &'a mut Cluster) -> Sys<'a> {
        let dir = c.dir.join("patroni");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let etcd = c.etcd().endpoint().trim_start_matches("http://").to_owned();
        let ports = cluster::distinct_ports(6);
        let mut members = Vec::new();
        for i in 0..3 {
            let name = format!("m{i}");
            let mdir = dir.join(&name);
            std::fs::create_dir_all(&mdir).unwrap();
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(&mdir);
            if nix::unistd::geteuid().is_root() {
                let _ = chown.status();
            }
            let (pg_port, api_port) = (ports[2 * i], ports[2 * i + 1]);
            let yaml = pgwarden::demo::member_config(&pgwarden::demo::LocalMember {
                host: "127.0.0.1",
                dir: &dir,
                scope: "patbench",
                name: &name,
                dcs: &pgwarden::demo::etcd3_section(&etcd),
                pg_port,
                api_port,
                timings: (T.ttl, T.loop_wait, T.retry_timeout),
            })
            .replacen(
                "\npostgresql:\n",
                &format!("\npostgresql:\n  bin_dir: {PGBIN}\n"),
                1,
            );
            let config = dir.join(format!("{name}.yml"));
            std::fs::write(&config, yaml).unwrap();
            members.push(Member {
                data_dir: mdir.join("data"),
                log: dir.join(format!("{name}.log")),
                name,
                pg_port,
                api_port,
                config,
            });
        }
        Sys {
            kind: Kind::Patroni,
            c,
            members,
            patroni: (0..3).map(|_| None).collect(),
            http: http(),
        }
    }

    fn child(&mut self, i: usize) -> &mut Option<Child> {
        match self.kind {
            Kind::Pgwarden => &mut self.c.members[i].child,
            Kind::Patroni => &mut self.patroni[i],
        }
    }

    /// Starts member `i`'s agent, as the harness starts its members.
    fn spawn(&mut self, i: usize) {
        match self.kind {
            Kind::Pgwarden => self.c.spawn(i),
            Kind::Patroni => {
                let m = &self.members[i];
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&m.log)
                    .unwrap();
                let mut cmd = Command::new(PATRONI);
                cmd.arg(&m.config)
                    .current_dir(m.data_dir.parent().unwrap())
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .env("HOME", &self.c.dir);
                self.c.as_member_user(&mut cmd);
                self.patroni[i] = Some(cmd.spawn().expect("spawn patroni"));
            }
        }
    }

    /// SIGTERM to member `i`'s agent and wait (without blocking the runtime) until it exits.
    async fn terminate(&mut self, i: usize) {
        let Some(mut ch) = self.child(i).take() else {
            return;
        };
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(ch.id() as i32, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(90);
        while Instant::now() < until {
            if let Ok(Some(_)) = ch.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "  {} did not stop within 90 s of SIGTERM: killed",
            self.members[i].name
        );
        let _ = ch.kill();
        let _ = ch.wait();
    }

    /// SIGKILL to member `i`'s agent and its postmaster.
    fn kill9(&mut self, i: usize) {
        let pm: Option<i32> =
            std::fs::read_to_string(self.members[i].data_dir.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok());
        let ch = self.child(i).take();
        if let Some(ch) = &ch {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(ch.id() as i32, libc::SIGKILL);
            }
        }
        if let Some(pm) = pm {
            // SAFETY: kill(2) on the member's postmaster.
            unsafe {
                libc::kill(pm, libc::SIGKILL);
            }
        }
        if let Some(mut ch) = ch {
            let _ = ch.wait();
        }
    }

    async fn sql(&self, i: usize, q: &str) -> Result<Vec<String>, String> {
        member_io::sql("127.0.0.1", self.members[i].pg_port, q).await
    }

    async fn api(&self, i: usize, m: Method, path: &str, body: Option<&str>) -> (u16, String) {
        member_io::api(
            &self.http,
            "127.0.0.1",
            self.members[i].api_port,
            m,
            path,
            body,
        )
        .await
    }

    /// The leader (by the first member's `/cluster` that answers) whose state is running.
    async fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            let (code, body) = self.api(i, Method::GET, "/cluster", None).await;
            if code != 200 {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let name = v["members"].as_array()?.iter().find_map(|m| {
                let role = m["role"].as_str()?;
                (["leader", "master", "primary"].contains(&role) && m["state"] == "running")
                    .then(|| m["name"].as_str().map(str::to_owned))?
            })?;
            return self.members.iter().position(|m| m.name == name);
        }
        None
    }

    /// The leader's index once it is a primary with both replicas streaming and, in a
    /// synchronous mode, a synchronous (or quorum) standby among them; `None` after `LONG`.
    async fn healthy(&self, mode: Mode) -> Option<usize> {
        let until = Instant::now() + LONG;
        while Instant::now() < until {
            if let Some(l) = self.leader().await
                && self.sql(l, "SELECT pg_is_in_recovery()").await.ok() == Some(vec!["f".into()])
                && let Ok(states) = self
                    .sql(
                        l,
                        "SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'",
                    )
                    .await
                && states.len() == self.members.len() - 1
                && match mode {
                    Mode::Async => true,
                    Mode::On => states.iter().any(|s| s == "sync"),
                    Mode::Quorum => states.iter().any(|s| s == "quorum"),
                }
            {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "  {}: not healthy ({}) within {LONG:?}",
            self.kind.label(),
            mode.label()
        );
        self.tail_logs();
        None
    }

    fn tail_logs(&self) {
        for m in &self.members {
            member_io::dump_log(&m.name, &m.log);
        }
    }

    async fn set_mode(&self, mode: Mode, strict: bool) -> Option<usize> {
        let l = self.healthy(Mode::Async).await?;
        let body = format!(
            r#"{{"synchronous_mode": {}, "synchronous_mode_strict": {strict}}}"#,
            mode.json()
        );
        let (code, text) = self.api(l, Method::PATCH, "/config", Some(&body)).await;
        if code != 200 {
            println!("  PATCH /config {body}: {code} {text}");
            return None;
        }
        // Both systems apply the configuration at their next cycle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.healthy(mode).await
    }
}

impl Drop for Sys<'_> {
    /// Patroni's members are not the harness's: kill what is left of them (agent and
    /// postmaster) when the bench ends early.
    fn drop(&mut self) {
        if self.kind == Kind::Patroni {
            for i in 0..self.members.len() {
                if self.patroni[i].is_some() {
                    self.kill9(i);
                }
            }
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

fn pgbench_command(port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(Path::new(PGBIN).join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .env("PGPASSWORD", "postgres");
    cmd
}

/// `pgbench -i` at scale 5 on `port`.
async fn pgbench_init(port: u16) {
    let out = pgbench_command(port)
        .args(["-i", "-q", "-s", "5", "postgres"])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => println!(
            "  pgbench -i failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("  pgbench -i failed: {e}"),
    }
}

/// Wall-clock time of day (UTC), to find an event in the member logs.
fn utc_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Runs pgbench against `port`; (TPS, average latency in ms).
async fn pgbench(port: u16, args: &[&str]) -> Option<(f64, f64)> {
    let out = pgbench_command(port)
        .args(args)
        .arg("postgres")
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        println!(
            "  pgbench {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let num = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))?
            .trim_start_matches(prefix)
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    };
    Some((num("tps = ")?, num("latency average = ")?))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Figures by (figure, mode, system).
type Results = BTreeMap<(&'static str, Mode, &'static str), Vec<f64>>;

fn record(r: &mut Results, fig: &'static str, mode: Mode, kind: Kind, x: f64) {
    r.entry((fig, mode, kind.label())).or_default().push(x);
}

const ROLL_TOTAL: &str = "rolling restart: total write unavailability (s)";
const ROLL_LONGEST: &str = "rolling restart: longest write gap (s)";
const ROLL_LOST: &str = "rolling restart: acknowledged writes lost";
const CRASH_LOST: &str = "strict, kill -9 of primary: acknowledged writes lost";
const CRASH_FIRST: &str = "strict, kill -9 of primary: crash to first write (s)";
const CRASH_STUCK: &str = "strict, kill -9 of primary: no write within 60 s (crashes)";
const PGB_TPS: &str = "pgbench -N, 4 clients: TPS";
const PGB_LAT: &str = "pgbench -N, 4 clients: average latency (ms)";
const PGB_RATIO: &str = "pgbench -N, 4 clients: TPS / async TPS";

/// Every measurement of one system, the writer running.
async fn measure(s: &mut Sys<'_>, r: &mut Results) {
    let kind = s.kind;
    let rolls = env_usize("BENCH_ROLLS", 3);
    let crashes = env_usize("BENCH_CRASHES", 3);
    let secs = env_usize("BENCH_PGBENCH_SECS", 20).to_string();
    let Some(l) = s.healthy(Mode::Async).await else {
        return;
    };
    s.sql(
        l,
        "CREATE TABLE IF NOT EXISTS sbench (id bigint PRIMARY KEY)",
    )
    .await
    .expect("create table");
    let ports: Vec<u16> = s.members.iter().map(|m| m.pg_port).collect();
    let mut w = Writer::start(ports);
    pgbench_init(s.members[l].pg_port).await;
    let modes: &[Mode] = match kind {
        Kind::Pgwarden => &[Mode::Async, Mode::On, Mode::Quorum],
        Kind::Patroni => &[Mode::Async, Mode::On],
    };
    let mut async_tps = None;
    'modes: for &mode in modes {
        println!("== {} {}", kind.label(), mode.label());
        let Some(l) = s.set_mode(mode, false).await else {
            continue;
        };
        // (c) commit latency.
        let port = s.members[l].pg_port;
        if let Some((tps, lat)) = pgbench(port, &["-N", "-c", "4", "-j", "2", "-T", &secs]).await {
            println!(
                "  pgbench on {}: {tps:.1} TPS, {lat:.3} ms",
                s.members[l].name
            );
            record(r, PGB_TPS, mode, kind, tps);
            record(r, PGB_LAT, mode, kind, lat);
            if mode == Mode::Async {
                async_tps = Some(tps);
            }
            if let Some(a) = async_tps {
                record(r, PGB_RATIO, mode, kind, tps / a);
            }
        }
        // (a) rolling restarts, the highest ordinal first.
        for _ in 0..rolls {
            if s.healthy(mode).await.is_none() {
                continue 'modes;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let t0 = Instant::now() - Duration::from_millis(100);
            for i in (0..s.members.len()).rev() {
                let was_leader = s.leader().await == Some(i);
                let at = utc_now();
                let t = Instant::now();
                s.terminate(i).await;
                let stopped = t.elapsed().as_secs_f64();
                s.spawn(i);
                if s.healthy(mode).await.is_none() {
                    continue 'modes;
                }
                let (_, step_gap) = gaps(&w.acks(), t, Instant::now());
                println!(
                    "  {at} SIGTERM {}{}: stopped in {stopped:.2} s, healthy again after \
                     {:.2} s; longest write gap meanwhile {step_gap:.3} s",
                    s.members[i].name,
                    if was_leader { " (leader)" } else { "" },
                    t.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t1 = Instant::now();
            let acks = w.acks();
            let (total, longest) = gaps(&acks, t0, t1);
            let lost = match s.leader().await {
                Some(l) => missing(&acks, t1, s.members[l].pg_port).await,
                None => None,
            };
            println!(
                "  roll: write unavailability {total:.3} s, longest gap {longest:.3} s, \
                 acknowledged writes lost {lost:?}"
            );
            record(r, ROLL_TOTAL, mode, kind, total);
            record(r, ROLL_LONGEST, mode, kind, longest);
            if let Some(lost) = lost {
                record(r, ROLL_LOST, mode, kind, lost.len() as f64);
            }
        }
    }
    // (b) strict mode, the primary killed with -9.
    for &mode in modes.iter().filter(|m| **m != Mode::Async) {
        println!("== {} {} strict", kind.label(), mode.label());
        if s.set_mode(mode, true).await.is_none() {
            continue;
        }
        for _ in 0..crashes {
            let Some(l) = s.healthy(mode).await else {
                break;
            };
            tokio::time::sleep(Duration::from_secs(3)).await;
            let old = s.members[l].pg_port;
            let at = utc_now();
            let t0 = Instant::now();
            s.kill9(l);
            let until = t0 + Duration::from_secs(60);
            let first = loop {
                let f = w
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|a| a.at > t0 && a.port != old)
                    .copied();
                if f.is_some() || Instant::now() > until {
                    break f;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let Some(first) = first else {
                println!(
                    "  {at} crash of {}: no write on another member within 60 s",
                    s.members[l].name
                );
                record(r, CRASH_STUCK, mode, kind, 1.0);
                s.tail_logs();
                s.spawn(l);
                continue;
            };
            let d = (first.at - t0).as_secs_f64();
            let new = s
                .members
                .iter()
                .find(|m| m.pg_port == first.port)
                .map(|m| m.name.clone())
                .unwrap_or_default();
            let lost = missing(&w.acks(), first.at, first.port).await;
            println!(
                "  {at} crash of {}: first write on {new} after {d:.3} s; acknowledged writes \
                 lost: {}",
                s.members[l].name,
                match &lost {
                    Some(v) if v.is_empty() => "0".to_string(),
                    Some(v) => format!("{} {v:?}", v.len()),
                    None => "not readable".into(),
                }
            );
            record(r, CRASH_FIRST, mode, kind, d);
            record(r, CRASH_STUCK, mode, kind, 0.0);
            if let Some(v) = lost {
                record(r, CRASH_LOST, mode, kind, v.len() as f64);
            }
            s.spawn(l);
        }
    }
    w.stop();
}

fn cell(xs: Option<&Vec<f64>>, fig: &str) -> String {
    let Some(xs) = xs.filter(|x| !x.is_empty()) else {
        return "–".into();
    };
    if fig == CRASH_STUCK {
        return format!("{} of {}", xs.iter().sum::<f64>(), xs.len());
    }
    let min = xs.iter().cloned().fold(f64::MAX, f64::min);
    let max = xs.iter().cloned().fold(f64::MIN, f64::max);
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let p = if fig.contains("lost") {
        0
    } else if fig.contains("TPS /") {
        2
    } else if fig.contains("TPS") {
        0
    } else {
        3
    };
    if xs.len() == 1 {
        format!("{min:.p$}")
    } else if min == max {
        format!("{min:.p$} (n={})", xs.len())
    } else {
        format!("{min:.p$}–{max:.p$}, mean {mean:.p$} (n={})", xs.len())
    }
}

fn table(r: &Results, patroni_note: &str) {
    println!();
    println!("| figure | mode | pgwarden (min–max, mean) | Patroni 3.0.2 | target |");
    println!("|---|---|---|---|---|");
    let figs = [
        (ROLL_TOTAL, ""),
        (ROLL_LONGEST, ""),
        (ROLL_LOST, ""),
        (CRASH_LOST, "0"),
        (CRASH_FIRST, "≤ ttl + 1 s = 6 s"),
        (CRASH_STUCK, "0"),
        (PGB_TPS, ""),
        (PGB_LAT, ""),
        (PGB_RATIO, ""),
    ];
    for (fig, target) in figs {
        for mode in [Mode::Async, Mode::On, Mode::Quorum] {
            if fig.starts_with("strict") && mode == Mode::Async {
                continue;
            }
            let pgw = cell(r.get(&(fig, mode, "pgwarden")), fig);
            let pat = if mode == Mode::Quorum {
                "n/a (no quorum mode in 3.0.2)".into()
            } else if !patroni_note.is_empty() {
                patroni_note.into()
            } else {
                cell(r.get(&(fig, mode, "patroni")), fig)
            };
            let m = if fig.starts_with("strict") {
                format!("{} strict", mode.label())
            } else {
                mode.label().into()
            };
            println!("| {fig} | {m} | {pgw} | {pat} | {target} |");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(mut c) = Cluster::start(Backend::Etcd, "sbench", 3, T).await else {
        eprintln!("components missing");
        return;
    };
    println!("cluster directory (member logs): {}", c.dir.display());
    let mut r = Results::new();
    let started = Instant::now();
    {
        let mut s = Sys::pgwarden(&mut c);
        measure(&mut s, &mut r).await;
        for i in 0..3 {
            s.terminate(i).await;
        }
    }
    println!(
        "pgwarden done after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let want = std::env::var("BENCH_PATRONI").map_or(true, |v| v != "0");
    let note = if !want {
        "not run (BENCH_PATRONI=0)"
    } else if !Path::new(PATRONI).is_file() {
        "not run (no /usr/bin/patroni)"
    } else {
        let mut s = Sys::patroni(&mut c);
        for i in 0..3 {
            s.spawn(i);
        }
        measure(&mut s, &mut r).await;
        for i in 0..3 {
            s.terminate(i).await;
        }
        ""
    };
    println!("all done after {:.0} s", started.elapsed().as_secs_f64());
    table(&r, note);
    // Keep the member logs for inspection.
    let keep = std::env::temp_dir().join(format!("pgwarden-bench-sync-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&keep);
    for log in walk_logs(&c.dir) {
        let name = log
            .strip_prefix(&c.dir)
            .unwrap()
            .to_string_lossy()
            .replace('/', "-");
        let _ = std::fs::copy(&log, keep.join(name));
    }
    println!("member logs kept in {}", keep.display());
}

/// The `*.log` files in `dir` and its `patroni` directory.
fn walk_logs(dir: &Path) -> Vec<PathBuf> {
    [dir.to_path_buf(), dir.join("patroni")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect()
}
